// Typed stack configuration: sizes and counts per environment (Pulumi.<stack>.yaml) and
// secrets (`pulumi config set --secret ...`), never plain text in the repository.
import * as pulumi from "@pulumi/pulumi";

export interface InfraConfig {
  env: string;
  azCount: number;
  natGateways: number;
  nodeDesiredCount: number;
  nodeMaxCount: number;
  kongDesiredCount: number;
  kongMaxCount: number;
  cpuTargetPercent: number;
  taskCpu: string;
  taskMemory: string;
  dbInstanceClass: string;
  dbAllocatedStorageGb: number;
  dbMultiAz: boolean;
  mqInstanceType: string;
  mqDeploymentMode: "SINGLE_INSTANCE" | "CLUSTER_MULTI_AZ";
  logRetentionDays: number;
  imageTag: string;
  certificateArn?: string;
  gatewayApiKey: pulumi.Output<string>;
  otlpEndpoint?: pulumi.Output<string>;
  otlpHeaders?: pulumi.Output<string>;
}

export function loadConfig(): InfraConfig {
  const c = new pulumi.Config();
  const nodeDesiredCount = c.getNumber("nodeDesiredCount") ?? 2;
  const kongDesiredCount = c.getNumber("kongDesiredCount") ?? 2;
  if (nodeDesiredCount < 2 || kongDesiredCount < 2) {
    throw new Error("nodeDesiredCount and kongDesiredCount must be at least 2 (one task may be replaced at any time)");
  }
  const mode = c.get("mqDeploymentMode") ?? "SINGLE_INSTANCE";
  if (mode !== "SINGLE_INSTANCE" && mode !== "CLUSTER_MULTI_AZ") {
    throw new Error(`mqDeploymentMode must be SINGLE_INSTANCE or CLUSTER_MULTI_AZ, not ${mode}`);
  }
  return {
    env: pulumi.getStack(),
    azCount: c.getNumber("azCount") ?? 2,
    natGateways: c.getNumber("natGateways") ?? 1,
    nodeDesiredCount,
    nodeMaxCount: c.getNumber("nodeMaxCount") ?? nodeDesiredCount * 2,
    kongDesiredCount,
    kongMaxCount: c.getNumber("kongMaxCount") ?? kongDesiredCount * 2,
    cpuTargetPercent: c.getNumber("cpuTargetPercent") ?? 60,
    taskCpu: c.get("taskCpu") ?? "256",
    taskMemory: c.get("taskMemory") ?? "512",
    dbInstanceClass: c.get("dbInstanceClass") ?? "db.t4g.micro",
    dbAllocatedStorageGb: c.getNumber("dbAllocatedStorageGb") ?? 20,
    dbMultiAz: c.getBoolean("dbMultiAz") ?? false,
    mqInstanceType: c.get("mqInstanceType") ?? "mq.t3.micro",
    mqDeploymentMode: mode,
    logRetentionDays: c.getNumber("logRetentionDays") ?? 14,
    imageTag: c.get("imageTag") ?? "latest",
    certificateArn: c.get("certificateArn"),
    gatewayApiKey: c.requireSecret("gatewayApiKey"),
    otlpEndpoint: c.getSecret("otlpEndpoint"),
    otlpHeaders: c.getSecret("otlpHeaders"),
  };
}

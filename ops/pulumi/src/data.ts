// Data services and their credentials: one RDS PostgreSQL instance per service (its own
// failure domain, maintenance window and size; no service can reach the other's data), one
// Amazon MQ RabbitMQ broker. Passwords are generated, stored only in Secrets Manager, and
// injected into tasks as secrets.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import * as random from "@pulumi/random";

import { InfraConfig } from "./config";

export interface ServiceSecrets {
  databaseUrl: aws.secretsmanager.Secret;
  amqpUrl: aws.secretsmanager.Secret;
}

/// A Secrets Manager secret holding `value` (a Pulumi secret output).
export function secret(name: string, description: string, value: pulumi.Input<string>): aws.secretsmanager.Secret {
  const s = new aws.secretsmanager.Secret(name, { description, recoveryWindowInDays: 7 });
  new aws.secretsmanager.SecretVersion(name, { secretId: s.id, secretString: pulumi.secret(value) });
  return s;
}

function password(name: string): random.RandomPassword {
  // Amazon MQ forbids , : = in passwords; URL-unsafe characters would need escaping.
  return new random.RandomPassword(name, { length: 32, special: false });
}

export function database(
  name: string,
  service: "orders" | "invoices",
  cfg: InfraConfig,
  subnetGroup: aws.rds.SubnetGroup,
  securityGroup: aws.ec2.SecurityGroup,
): { instance: aws.rds.Instance; url: pulumi.Output<string> } {
  const pw = password(`${name}-${service}-db`);
  const instance = new aws.rds.Instance(`${name}-${service}-db`, {
    engine: "postgres",
    engineVersion: "16",
    instanceClass: cfg.dbInstanceClass,
    allocatedStorage: cfg.dbAllocatedStorageGb,
    dbName: service,
    username: service,
    password: pw.result,
    dbSubnetGroupName: subnetGroup.name,
    vpcSecurityGroupIds: [securityGroup.id],
    publiclyAccessible: false,
    storageEncrypted: true,
    multiAz: cfg.dbMultiAz,
    backupRetentionPeriod: 7,
    deletionProtection: cfg.env === "prod",
    skipFinalSnapshot: cfg.env !== "prod",
    finalSnapshotIdentifier: cfg.env === "prod" ? `${name}-${service}-final` : undefined,
    autoMinorVersionUpgrade: true,
  });
  const url = pulumi.secret(
    pulumi.interpolate`postgres://${service}:${pw.result}@${instance.address}:${instance.port}/${service}?sslmode=require`,
  );
  return { instance, url };
}

export function broker(
  name: string,
  cfg: InfraConfig,
  subnetIds: pulumi.Input<string>[],
  securityGroup: aws.ec2.SecurityGroup,
): { broker: aws.mq.Broker; url: pulumi.Output<string> } {
  const pw = password(`${name}-mq`);
  const mq = new aws.mq.Broker(`${name}-mq`, {
    brokerName: `${name}-mq`,
    engineType: "RabbitMQ",
    engineVersion: "3.13",
    hostInstanceType: cfg.mqInstanceType,
    deploymentMode: cfg.mqDeploymentMode,
    publiclyAccessible: false,
    subnetIds: cfg.mqDeploymentMode === "SINGLE_INSTANCE" ? [subnetIds[0]] : subnetIds,
    securityGroups: [securityGroup.id],
    autoMinorVersionUpgrade: true,
    logs: { general: true },
    users: [{ username: "app", password: pw.result }],
  });
  // amqps://<id>.mq.<region>.amazonaws.com:5671
  const endpoint = mq.instances.apply((i) => i[0]?.endpoints?.[0] ?? "");
  const url = pulumi.secret(
    pulumi.all([endpoint, pw.result]).apply(([ep, p]) => `${ep.replace("amqps://", `amqps://app:${p}@`)}/%2f`),
  );
  return { broker: mq, url };
}

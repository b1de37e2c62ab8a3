// ECS Fargate: orders-node, invoices-node and Kong, each with a log group, CPU autoscaling
// and secrets injected from Secrets Manager. Kong sits behind the public ALB and reaches the
// nodes through ECS Service Connect under the same names as in docker compose
// (orders-node:3333, invoices-node:3334), so one Kong declarative config serves both.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

import { InfraConfig } from "./config";
import { PORTS } from "./security";

export const HEALTH_PATH = "/health/ready";

export interface TaskSecret {
  name: string;
  secret: aws.secretsmanager.Secret;
}

export interface ServiceSpec {
  name: "orders-node" | "invoices-node" | "kong";
  image: pulumi.Input<string>;
  port: number;
  environment: Record<string, string>;
  secrets: TaskSecret[];
  securityGroup: aws.ec2.SecurityGroup;
  desiredCount: number;
  maxCount: number;
  /** Container health check command. */
  healthCheck: string[];
  /** Publishes the port to Service Connect clients under `name`. */
  serviceConnectServer: boolean;
  targetGroup?: aws.lb.TargetGroup;
}

export interface Platform {
  cluster: aws.ecs.Cluster;
  namespace: aws.servicediscovery.HttpNamespace;
  subnetIds: pulumi.Input<string>[];
  region: pulumi.Output<string>;
  cfg: InfraConfig;
  prefix: string;
}

export function platform(prefix: string, cfg: InfraConfig, subnetIds: pulumi.Input<string>[]): Platform {
  const namespace = new aws.servicediscovery.HttpNamespace(`${prefix}-ns`, { name: `${prefix}.internal` });
  const cluster = new aws.ecs.Cluster(`${prefix}-cluster`, {
    settings: [{ name: "containerInsights", value: "enabled" }],
    serviceConnectDefaults: { namespace: namespace.arn },
  });
  const region = aws.getRegionOutput().region;
  return { cluster, namespace, subnetIds, region, cfg, prefix };
}

export function repository(name: string): aws.ecr.Repository {
  const repo = new aws.ecr.Repository(name, {
    name,
    imageTagMutability: "IMMUTABLE",
    imageScanningConfiguration: { scanOnPush: true },
    encryptionConfigurations: [{ encryptionType: "AES256" }],
    forceDelete: false,
  });
  new aws.ecr.LifecyclePolicy(name, {
    repository: repo.name,
    policy: JSON.stringify({
      rules: [{ rulePriority: 1, description: "keep the last 30 images", selection: { tagStatus: "any", countType: "imageCountMoreThan", countNumber: 30 }, action: { type: "expire" } }],
    }),
  });
  return repo;
}

function executionRole(p: Platform, spec: ServiceSpec): aws.iam.Role {
  const role = new aws.iam.Role(`${p.prefix}-${spec.name}-exec`, {
    assumeRolePolicy: JSON.stringify({
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Principal: { Service: "ecs-tasks.amazonaws.com" }, Action: "sts:AssumeRole" }],
    }),
  });
  new aws.iam.RolePolicyAttachment(`${p.prefix}-${spec.name}-exec`, {
    role: role.name,
    policyArn: "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy",
  });
  // Each task may read its own secrets and nothing else.
  new aws.iam.RolePolicy(`${p.prefix}-${spec.name}-secrets`, {
    role: role.id,
    policy: pulumi.all(spec.secrets.map((s) => s.secret.arn)).apply((arns) =>
      JSON.stringify({ Version: "2012-10-17", Statement: [{ Effect: "Allow", Action: ["secretsmanager:GetSecretValue"], Resource: arns }] }),
    ),
  });
  return role;
}

export function service(p: Platform, spec: ServiceSpec): { service: aws.ecs.Service; logGroup: aws.cloudwatch.LogGroup } {
  const logGroup = new aws.cloudwatch.LogGroup(`${p.prefix}-${spec.name}`, {
    name: `/ecs/${p.prefix}/${spec.name}`,
    retentionInDays: p.cfg.logRetentionDays,
  });
  const containerDefinitions = pulumi
    .all([spec.image, logGroup.name, p.region, pulumi.all(spec.secrets.map((s) => s.secret.arn))])
    .apply(([image, group, region, arns]) =>
      JSON.stringify([
        {
          name: spec.name,
          image,
          essential: true,
          portMappings: [{ name: "http", containerPort: spec.port, protocol: "tcp" }],
          environment: Object.entries(spec.environment).map(([name, value]) => ({ name, value })),
          secrets: spec.secrets.map((s, i) => ({ name: s.name, valueFrom: arns[i] })),
          healthCheck: { command: spec.healthCheck, interval: 10, timeout: 5, retries: 3, startPeriod: 20 },
          stopTimeout: 30,
          readonlyRootFilesystem: spec.name !== "kong",
          logConfiguration: { logDriver: "awslogs", options: { "awslogs-group": group, "awslogs-region": region, "awslogs-stream-prefix": spec.name } },
        },
      ]),
    );
  const task = new aws.ecs.TaskDefinition(`${p.prefix}-${spec.name}`, {
    family: `${p.prefix}-${spec.name}`,
    requiresCompatibilities: ["FARGATE"],
    networkMode: "awsvpc",
    cpu: p.cfg.taskCpu,
    memory: p.cfg.taskMemory,
    executionRoleArn: executionRole(p, spec).arn,
    runtimePlatform: { operatingSystemFamily: "LINUX", cpuArchitecture: "X86_64" },
    containerDefinitions,
  });
  const svc = new aws.ecs.Service(`${p.prefix}-${spec.name}`, {
    cluster: p.cluster.arn,
    taskDefinition: task.arn,
    desiredCount: spec.desiredCount,
    launchType: "FARGATE",
    networkConfiguration: { subnets: p.subnetIds, securityGroups: [spec.securityGroup.id], assignPublicIp: false },
    deploymentCircuitBreaker: { enable: true, rollback: true },
    deploymentMinimumHealthyPercent: 100,
    deploymentMaximumPercent: 200,
    healthCheckGracePeriodSeconds: spec.targetGroup ? 30 : undefined,
    loadBalancers: spec.targetGroup ? [{ targetGroupArn: spec.targetGroup.arn, containerName: spec.name, containerPort: spec.port }] : [],
    serviceConnectConfiguration: {
      enabled: true,
      namespace: p.namespace.arn,
      services: spec.serviceConnectServer
        ? [{ portName: "http", discoveryName: spec.name, clientAlias: [{ port: spec.port, dnsName: spec.name }] }]
        : undefined,
    },
    propagateTags: "SERVICE",
  });
  const target = new aws.appautoscaling.Target(`${p.prefix}-${spec.name}`, {
    serviceNamespace: "ecs",
    scalableDimension: "ecs:service:DesiredCount",
    resourceId: pulumi.interpolate`service/${p.cluster.name}/${svc.name}`,
    minCapacity: spec.desiredCount,
    maxCapacity: spec.maxCount,
  });
  new aws.appautoscaling.Policy(`${p.prefix}-${spec.name}-cpu`, {
    policyType: "TargetTrackingScaling",
    serviceNamespace: target.serviceNamespace,
    scalableDimension: target.scalableDimension,
    resourceId: target.resourceId,
    targetTrackingScalingPolicyConfiguration: {
      predefinedMetricSpecification: { predefinedMetricType: "ECSServiceAverageCPUUtilization" },
      targetValue: p.cfg.cpuTargetPercent,
      scaleInCooldown: 120,
      scaleOutCooldown: 60,
    },
  });
  return { service: svc, logGroup };
}

/// The public ALB in front of Kong; HTTPS when a certificate is configured.
export function gateway(
  prefix: string,
  cfg: InfraConfig,
  vpcId: pulumi.Input<string>,
  publicSubnetIds: pulumi.Input<string>[],
  albSg: aws.ec2.SecurityGroup,
): { alb: aws.lb.LoadBalancer; targetGroup: aws.lb.TargetGroup; url: pulumi.Output<string> } {
  const alb = new aws.lb.LoadBalancer(`${prefix}-alb`, {
    loadBalancerType: "application",
    internal: false,
    subnets: publicSubnetIds,
    securityGroups: [albSg.id],
    dropInvalidHeaderFields: true,
  });
  const targetGroup = new aws.lb.TargetGroup(`${prefix}-kong`, {
    vpcId,
    port: PORTS.kongProxy,
    protocol: "HTTP",
    targetType: "ip",
    deregistrationDelay: 30,
    // Kong's status listener answers /status/ready once its config is loaded.
    healthCheck: { path: "/status/ready", port: String(PORTS.kongStatus), matcher: "200", interval: 15, healthyThreshold: 2, unhealthyThreshold: 3 },
  });
  const forward = [{ type: "forward", targetGroupArn: targetGroup.arn }];
  if (cfg.certificateArn) {
    new aws.lb.Listener(`${prefix}-https`, { loadBalancerArn: alb.arn, port: PORTS.https, protocol: "HTTPS", certificateArn: cfg.certificateArn, sslPolicy: "ELBSecurityPolicy-TLS13-1-2-2021-06", defaultActions: forward });
    new aws.lb.Listener(`${prefix}-http`, { loadBalancerArn: alb.arn, port: PORTS.http, protocol: "HTTP", defaultActions: [{ type: "redirect", redirect: { port: "443", protocol: "HTTPS", statusCode: "HTTP_301" } }] });
  } else {
    new aws.lb.Listener(`${prefix}-http`, { loadBalancerArn: alb.arn, port: PORTS.http, protocol: "HTTP", defaultActions: forward });
  }
  const url = pulumi.interpolate`${cfg.certificateArn ? "https" : "http"}://${alb.dnsName}`;
  return { alb, targetGroup, url };
}

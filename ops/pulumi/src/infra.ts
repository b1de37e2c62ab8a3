// The whole deployment: network, security groups, data stores and their secrets, images,
// services, gateway, dashboards. `deploy` is what index.ts runs and what the tests call.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

import { InfraConfig } from "./config";
import { broker, database, secret } from "./data";
import { ids, network } from "./network";
import { PORTS, securityGroups } from "./security";
import { TaskSecret, gateway, platform, repository, service } from "./services";

export interface Outputs {
  gatewayUrl: pulumi.Output<string>;
  dashboardUrl: pulumi.Output<string>;
  logsUrl: pulumi.Output<string>;
  repositories: Record<string, pulumi.Output<string>>;
}

/// What every node's container gets besides its secrets.
function nodeEnvironment(name: string, port: number, otlp: boolean): Record<string, string> {
  return {
    HTTP_ADDR: `0.0.0.0:${port}`,
    OTEL_SERVICE_NAME: name,
    LOG_FORMAT: "json",
    RUST_LOG: "info",
    ...(otlp ? { OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf" } : {}),
  };
}

export function deploy(cfg: InfraConfig): Outputs {
  const prefix = `oi-${cfg.env}`;
  const net = network(prefix, cfg.azCount, cfg.natGateways);
  const sgs = securityGroups(prefix, net.vpc.id);
  const privateIds = ids(net.privateSubnets);

  const dbSubnets = new aws.rds.SubnetGroup(`${prefix}-db`, { subnetIds: privateIds });
  const ordersDb = database(prefix, "orders", cfg, dbSubnets, sgs.ordersDb);
  const invoicesDb = database(prefix, "invoices", cfg, dbSubnets, sgs.invoicesDb);
  const mq = broker(prefix, cfg, privateIds, sgs.broker);

  const otlp: TaskSecret[] = [];
  if (cfg.otlpEndpoint) {
    otlp.push({ name: "OTEL_EXPORTER_OTLP_ENDPOINT", secret: secret(`${prefix}-otlp-endpoint`, "OTLP endpoint of the trace backend", cfg.otlpEndpoint) });
  }
  if (cfg.otlpHeaders) {
    otlp.push({ name: "OTEL_EXPORTER_OTLP_HEADERS", secret: secret(`${prefix}-otlp-headers`, "OTLP headers (credentials) of the trace backend", cfg.otlpHeaders) });
  }
  const nodeSecrets = (svc: "orders" | "invoices", dbUrl: pulumi.Output<string>): TaskSecret[] => [
    { name: "DATABASE_URL", secret: secret(`${prefix}-${svc}-database-url`, `${svc}-node database URL`, dbUrl) },
    { name: "AMQP_URL", secret: secret(`${prefix}-${svc}-amqp-url`, `${svc}-node broker URL`, mq.url) },
    ...otlp,
  ];

  const repos = {
    "orders-node": repository(`${prefix}-orders-node`),
    "invoices-node": repository(`${prefix}-invoices-node`),
    kong: repository(`${prefix}-kong`),
  };
  const image = (repo: aws.ecr.Repository) => pulumi.interpolate`${repo.repositoryUrl}:${cfg.imageTag}`;

  const gw = gateway(prefix, cfg, net.vpc.id, ids(net.publicSubnets), sgs.alb);
  const plat = platform(prefix, cfg, privateIds);
  const nodeHealth = ["CMD", "/app/service", "healthcheck"]; // GET /health/ready

  const orders = service(plat, {
    name: "orders-node",
    image: image(repos["orders-node"]),
    port: PORTS.orders,
    environment: nodeEnvironment("orders-node", PORTS.orders, otlp.length > 0),
    secrets: nodeSecrets("orders", ordersDb.url),
    securityGroup: sgs.orders,
    desiredCount: cfg.nodeDesiredCount,
    maxCount: cfg.nodeMaxCount,
    healthCheck: nodeHealth,
    serviceConnectServer: true,
  });
  const invoices = service(plat, {
    name: "invoices-node",
    image: image(repos["invoices-node"]),
    port: PORTS.invoices,
    environment: { ...nodeEnvironment("invoices-node", PORTS.invoices, otlp.length > 0), PAYMENT_TERMS: "30d" },
    secrets: nodeSecrets("invoices", invoicesDb.url),
    securityGroup: sgs.invoices,
    desiredCount: cfg.nodeDesiredCount,
    maxCount: cfg.nodeMaxCount,
    healthCheck: nodeHealth,
    serviceConnectServer: true,
  });
  const kong = service(plat, {
    name: "kong",
    image: image(repos.kong),
    port: PORTS.kongProxy,
    environment: {
      KONG_DATABASE: "off",
      KONG_PROXY_LISTEN: `0.0.0.0:${PORTS.kongProxy}`,
      KONG_STATUS_LISTEN: `0.0.0.0:${PORTS.kongStatus}`,
      KONG_ADMIN_LISTEN: "off",
      KONG_TRACING_INSTRUMENTATIONS: "all",
      KONG_TRACING_SAMPLING_RATE: "1.0",
    },
    secrets: [{ name: "KONG_API_KEY", secret: secret(`${prefix}-gateway-api-key`, "API key of the gateway's consumer", cfg.gatewayApiKey) }],
    securityGroup: sgs.kong,
    desiredCount: cfg.kongDesiredCount,
    maxCount: cfg.kongMaxCount,
    healthCheck: ["CMD", "kong", "health"],
    serviceConnectServer: false,
    targetGroup: gw.targetGroup,
  });

  const dashboard = new aws.cloudwatch.Dashboard(`${prefix}-dashboard`, {
    dashboardName: `${prefix}-orders-invoices`,
    dashboardBody: pulumi
      .all([plat.cluster.name, orders.service.name, invoices.service.name, kong.service.name, gw.alb.arnSuffix, ordersDb.instance.identifier, invoicesDb.instance.identifier, mq.broker.brokerName, plat.region])
      .apply(([cluster, o, i, k, alb, odb, idb, brokerName, region]) =>
        JSON.stringify({
          widgets: [
            { type: "metric", width: 12, height: 6, properties: { title: "Gateway requests and 5xx", region, metrics: [["AWS/ApplicationELB", "RequestCount", "LoadBalancer", alb], [".", "HTTPCode_Target_5XX_Count", ".", "."]], stat: "Sum", period: 60 } },
            { type: "metric", width: 12, height: 6, properties: { title: "Service CPU", region, metrics: [o, i, k].map((s) => ["AWS/ECS", "CPUUtilization", "ClusterName", cluster, "ServiceName", s]), stat: "Average", period: 60 } },
            { type: "metric", width: 12, height: 6, properties: { title: "Database CPU", region, metrics: [odb, idb].map((d) => ["AWS/RDS", "CPUUtilization", "DBInstanceIdentifier", d]), stat: "Average", period: 60 } },
            { type: "metric", width: 12, height: 6, properties: { title: "Broker messages ready", region, metrics: [["AWS/AmazonMQ", "MessageReadyCount", "Broker", brokerName]], stat: "Maximum", period: 60 } },
          ],
        }),
      ),
  });

  return {
    gatewayUrl: gw.url,
    dashboardUrl: pulumi.interpolate`https://${plat.region}.console.aws.amazon.com/cloudwatch/home?region=${plat.region}#dashboards:name=${dashboard.dashboardName}`,
    logsUrl: pulumi.interpolate`https://${plat.region}.console.aws.amazon.com/cloudwatch/home?region=${plat.region}#logsV2:log-groups`,
    repositories: Object.fromEntries(Object.entries(repos).map(([k, r]) => [k, r.repositoryUrl])),
  };
}

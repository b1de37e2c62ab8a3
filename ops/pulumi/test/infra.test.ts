// Unit tests of the deployment on Pulumi's mocks: no cloud account, no Pulumi CLI. Each
// committed stack config (dev, prod) is deployed against the mocks and every registered
// resource is checked against the security and availability rules of the design.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { before, describe, test } from "node:test";

import * as pulumi from "@pulumi/pulumi";

interface Registered {
  type: string;
  name: string;
  id: string;
  inputs: Record<string, any>;
}

const PROJECT = "orders-invoices";
const ROOT = path.resolve(__dirname, "..", "..");
const API_KEY = "test-gateway-key-not-real";
const OTLP_HEADERS = "authorization=Bearer test-token-not-real";
const PASSWORD = "generated-password-0123456789ab";

/// `config:` of a committed stack file, as Pulumi would load it.
function stackConfig(stack: string): Record<string, string> {
  const text = fs.readFileSync(path.join(ROOT, `Pulumi.${stack}.yaml`), "utf8");
  const config: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^\s{2}([\w-]+:[\w-]+):\s*(.+?)\s*$/);
    if (m) config[m[1]] = m[2].replace(/^"(.*)"$/, "$1");
  }
  return config;
}

async function deployStack(stack: string): Promise<{ resources: Registered[]; outputs: Record<string, string>; config: Record<string, string> }> {
  const resources: Registered[] = [];
  pulumi.runtime.setMocks(
    {
      newResource(args) {
        const id = `${args.name}-id`;
        resources.push({ type: args.type, name: args.name, id, inputs: args.inputs });
        const computed: Record<string, any> = { arn: `arn:aws:mock:us-east-1:123456789012:${args.name}`, name: args.inputs.name ?? args.name };
        switch (args.type) {
          case "aws:ecr/repository:Repository":
            computed.repositoryUrl = `123456789012.dkr.ecr.us-east-1.amazonaws.com/${args.inputs.name}`;
            break;
          case "aws:rds/instance:Instance":
            Object.assign(computed, { address: `${args.name}.rds.amazonaws.com`, port: 5432, identifier: args.name });
            break;
          case "aws:mq/broker:Broker":
            computed.instances = [{ endpoints: ["amqps://b-1.mq.us-east-1.amazonaws.com:5671"] }];
            break;
          case "aws:lb/loadBalancer:LoadBalancer":
            Object.assign(computed, { dnsName: "gw-123.us-east-1.elb.amazonaws.com", arnSuffix: "app/gw/123" });
            break;
          case "random:index/randomPassword:RandomPassword":
            computed.result = PASSWORD;
            break;
        }
        return { id, state: { ...args.inputs, ...computed } };
      },
      call(args) {
        if (args.token === "aws:index/getAvailabilityZones:getAvailabilityZones") return { names: ["us-east-1a", "us-east-1b", "us-east-1c"] };
        if (args.token === "aws:index/getRegion:getRegion") return { name: "us-east-1", region: "us-east-1" };
        return args.inputs;
      },
    },
    PROJECT,
    stack,
    false,
  );
  const config = stackConfig(stack);
  pulumi.runtime.setAllConfig(
    { ...config, [`${PROJECT}:gatewayApiKey`]: API_KEY, [`${PROJECT}:otlpEndpoint`]: "https://otlp.example.com", [`${PROJECT}:otlpHeaders`]: OTLP_HEADERS },
    [`${PROJECT}:gatewayApiKey`, `${PROJECT}:otlpEndpoint`, `${PROJECT}:otlpHeaders`],
  );
  const { loadConfig } = await import("../src/config");
  const { deploy } = await import("../src/infra");
  const out = deploy(loadConfig());
  const value = (o: pulumi.Output<string>) => new Promise<string>((resolve) => o.apply(resolve));
  const outputs = { gatewayUrl: await value(out.gatewayUrl), dashboardUrl: await value(out.dashboardUrl) };
  // Let every resource whose inputs were still resolving register.
  let seen = -1;
  while (seen !== resources.length) {
    seen = resources.length;
    await new Promise((r) => setTimeout(r, 50));
  }
  return { resources, outputs, config };
}

const of = (rs: Registered[], type: string) => rs.filter((r) => r.type === type);
const byId = (rs: Registered[]) => new Map(rs.map((r) => [r.id, r]));
const num = (config: Record<string, string>, key: string) => Number(config[`${PROJECT}:${key}`]);

for (const stack of ["dev", "prod"]) {
  describe(`stack ${stack}`, () => {
    let resources: Registered[] = [];
    let outputs: Record<string, string> = {};
    let config: Record<string, string> = {};
    let sgs: Registered[] = [];
    let tasks: Registered[] = [];
    before(async () => {
      ({ resources, outputs, config } = await deployStack(stack));
      sgs = of(resources, "aws:ec2/securityGroup:SecurityGroup");
      tasks = of(resources, "aws:ecs/taskDefinition:TaskDefinition");
    });
    const sgName = (id: string) => byId(sgs).get(id)?.name.replace(`oi-${stack}-`, "") ?? `unknown ${id}`;
    const container = (family: string) => {
      const task = tasks.find((t) => t.inputs.family === `oi-${stack}-${family}`);
      assert.ok(task, `task definition for ${family}`);
      return JSON.parse(task.inputs.containerDefinitions)[0];
    };
    const secretArn = (name: string) => of(resources, "aws:secretsmanager/secret:Secret").find((s) => s.name === `oi-${stack}-${name}`)?.inputs;

    test("only the load balancer is open to the internet, on 80 and 443", () => {
      for (const sg of sgs) {
        for (const rule of sg.inputs.ingress ?? []) {
          if ((rule.cidrBlocks ?? []).includes("0.0.0.0/0") || (rule.ipv6CidrBlocks ?? []).length > 0) {
            assert.equal(sgName(sg.id), "alb", `${sg.name} is open to the internet`);
            assert.ok([80, 443].includes(rule.fromPort) && rule.fromPort === rule.toPort, JSON.stringify(rule));
          }
        }
      }
    });

    test("each security group admits only its intended peers", () => {
      const expected: Record<string, string[]> = {
        alb: ["443<-0.0.0.0/0", "80<-0.0.0.0/0"],
        kong: ["8000<-alb", "8100<-alb"],
        "orders-node": ["3333<-kong"],
        "invoices-node": ["3334<-kong"],
        "orders-db": ["5432<-orders-node"],
        "invoices-db": ["5432<-invoices-node"],
        broker: ["5671<-invoices-node", "5671<-orders-node"],
      };
      const actual: Record<string, string[]> = {};
      for (const sg of sgs) {
        const rules: string[] = [];
        for (const rule of sg.inputs.ingress ?? []) {
          assert.equal(rule.fromPort, rule.toPort, `${sg.name}: single ports only`);
          for (const peer of rule.securityGroups ?? []) rules.push(`${rule.fromPort}<-${sgName(peer)}`);
          for (const cidr of rule.cidrBlocks ?? []) rules.push(`${rule.fromPort}<-${cidr}`);
        }
        actual[sgName(sg.id)] = rules.sort();
      }
      assert.deepEqual(actual, expected);
      for (const data of ["orders-db", "invoices-db", "broker"]) {
        assert.deepEqual(sgs.find((s) => sgName(s.id) === data)?.inputs.egress ?? [], [], `${data} needs no egress`);
      }
    });

    test("each service has its own encrypted, private database", () => {
      const dbs = of(resources, "aws:rds/instance:Instance");
      assert.equal(dbs.length, 2);
      for (const db of dbs) {
        assert.equal(db.inputs.publiclyAccessible, false, db.name);
        assert.equal(db.inputs.storageEncrypted, true, db.name);
        assert.equal(db.inputs.engine, "postgres");
        assert.equal(db.inputs.vpcSecurityGroupIds.length, 1);
        const svc = db.inputs.dbName as string;
        assert.equal(sgName(db.inputs.vpcSecurityGroupIds[0]), `${svc}-db`);
        assert.equal(db.inputs.instanceClass, config[`${PROJECT}:dbInstanceClass`]);
        assert.equal(db.inputs.multiAz, config[`${PROJECT}:dbMultiAz`] === "true");
        assert.equal(db.inputs.deletionProtection, stack === "prod");
      }
      const group = of(resources, "aws:rds/subnetGroup:SubnetGroup")[0];
      const subnets = byId(of(resources, "aws:ec2/subnet:Subnet"));
      for (const id of group.inputs.subnetIds) assert.match(subnets.get(id)!.name, /private/);
    });

    test("the broker is Amazon MQ for RabbitMQ, private, in private subnets", () => {
      const [mq] = of(resources, "aws:mq/broker:Broker");
      assert.equal(mq.inputs.engineType, "RabbitMQ");
      assert.equal(mq.inputs.publiclyAccessible, false);
      assert.equal(mq.inputs.deploymentMode, config[`${PROJECT}:mqDeploymentMode`]);
      const subnets = byId(of(resources, "aws:ec2/subnet:Subnet"));
      for (const id of mq.inputs.subnetIds) assert.match(subnets.get(id)!.name, /private/);
      assert.deepEqual(mq.inputs.securityGroups.map(sgName), ["broker"]);
    });

    test("every node task takes DATABASE_URL and AMQP_URL from secrets, never from plain environment", () => {
      for (const [family, svc] of [["orders-node", "orders"], ["invoices-node", "invoices"]]) {
        const c = container(family);
        const secrets = Object.fromEntries(c.secrets.map((s: any) => [s.name, s.valueFrom]));
        assert.equal(secrets.DATABASE_URL, secretArn(`${svc}-database-url`)?.arn ?? `arn:aws:mock:us-east-1:123456789012:oi-${stack}-${svc}-database-url`);
        assert.equal(secrets.AMQP_URL, `arn:aws:mock:us-east-1:123456789012:oi-${stack}-${svc}-amqp-url`);
        assert.ok(secrets.OTEL_EXPORTER_OTLP_ENDPOINT && secrets.OTEL_EXPORTER_OTLP_HEADERS, "OTLP settings are secrets");
        const env = Object.fromEntries(c.environment.map((e: any) => [e.name, e.value]));
        for (const forbidden of ["DATABASE_URL", "AMQP_URL", "OTEL_EXPORTER_OTLP_HEADERS", "KONG_API_KEY"]) assert.ok(!(forbidden in env), `${family}: ${forbidden} in plain env`);
        assert.equal(env.HTTP_ADDR, `0.0.0.0:${family === "orders-node" ? 3333 : 3334}`);
        assert.equal(env.OTEL_SERVICE_NAME, family);
        assert.deepEqual(c.healthCheck.command, ["CMD", "/app/service", "healthcheck"], "the node's own /health/ready probe");
        assert.equal(c.logConfiguration.options["awslogs-group"], `/ecs/oi-${stack}/${family}`);
      }
      const kong = container("kong");
      assert.deepEqual(kong.secrets.map((s: any) => s.name), ["KONG_API_KEY"]);
      const everything = JSON.stringify(tasks.map((t) => t.inputs));
      for (const secretValue of [API_KEY, OTLP_HEADERS, PASSWORD]) assert.ok(!everything.includes(secretValue), "a secret value leaked into a task definition");
    });

    test("task secrets are readable only by their own task", () => {
      const policies = of(resources, "aws:iam/rolePolicy:RolePolicy");
      for (const family of ["orders-node", "invoices-node", "kong"]) {
        const policy = policies.find((p) => p.name === `oi-${stack}-${family}-secrets`);
        assert.ok(policy, family);
        const arns: string[] = JSON.parse(policy.inputs.policy).Statement[0].Resource;
        const own = JSON.parse(tasks.find((t) => t.inputs.family === `oi-${stack}-${family}`)!.inputs.containerDefinitions)[0].secrets.map((s: any) => s.valueFrom);
        assert.deepEqual([...arns].sort(), [...own].sort());
      }
    });

    test("services run the configured counts in private subnets, scale on CPU, and Kong is behind the ALB", () => {
      const services = of(resources, "aws:ecs/service:Service");
      const subnets = byId(of(resources, "aws:ec2/subnet:Subnet"));
      assert.equal(services.length, 3);
      for (const s of services) {
        const family = s.name.replace(`oi-${stack}-`, "");
        const desired = family === "kong" ? num(config, "kongDesiredCount") : num(config, "nodeDesiredCount");
        assert.ok(desired >= 2);
        assert.equal(s.inputs.desiredCount, desired, family);
        assert.equal(s.inputs.launchType, "FARGATE");
        assert.equal(s.inputs.networkConfiguration.assignPublicIp, false);
        for (const id of s.inputs.networkConfiguration.subnets) assert.match(subnets.get(id)!.name, /private/);
        const target = of(resources, "aws:appautoscaling/target:Target").find((t) => t.name === s.name);
        assert.equal(target?.inputs.minCapacity, desired);
        assert.equal(target?.inputs.maxCapacity, family === "kong" ? num(config, "kongMaxCount") : num(config, "nodeMaxCount"));
        const policy = of(resources, "aws:appautoscaling/policy:Policy").find((p) => p.name === `${s.name}-cpu`);
        assert.equal(policy?.inputs.targetTrackingScalingPolicyConfiguration.predefinedMetricSpecification.predefinedMetricType, "ECSServiceAverageCPUUtilization");
        assert.equal(policy?.inputs.targetTrackingScalingPolicyConfiguration.targetValue, num(config, "cpuTargetPercent"));
        if (family === "kong") {
          assert.equal(s.inputs.loadBalancers[0].containerPort, 8000);
        } else {
          assert.deepEqual(s.inputs.loadBalancers ?? [], [], "nodes are reached only through Kong");
          const alias = s.inputs.serviceConnectConfiguration.services[0].clientAlias[0];
          assert.equal(alias.dnsName, family);
          // The same upstream names the Kong declarative config uses (compose and AWS alike).
          const kongConfig = fs.readFileSync(path.join(ROOT, "..", "kong", "kong.yml.tmpl"), "utf8");
          assert.ok(kongConfig.includes(`url: http://${alias.dnsName}:${alias.port}`), `${family} upstream`);
        }
      }
      const [tg] = of(resources, "aws:lb/targetGroup:TargetGroup");
      assert.equal(tg.inputs.healthCheck.path, "/status/ready");
      assert.equal(tg.inputs.healthCheck.port, "8100");
      const [alb] = of(resources, "aws:lb/loadBalancer:LoadBalancer");
      assert.equal(alb.inputs.internal, false);
      for (const id of alb.inputs.subnets) assert.match(subnets.get(id)!.name, /public/);
    });

    test("logs are kept for the configured time; images live in scanned, immutable repositories", () => {
      const groups = of(resources, "aws:cloudwatch/logGroup:LogGroup");
      assert.equal(groups.length, 3);
      for (const g of groups) assert.equal(g.inputs.retentionInDays, num(config, "logRetentionDays"));
      const repos = of(resources, "aws:ecr/repository:Repository");
      assert.deepEqual(repos.map((r) => r.inputs.name).sort(), [`oi-${stack}-invoices-node`, `oi-${stack}-kong`, `oi-${stack}-orders-node`]);
      for (const r of repos) {
        assert.equal(r.inputs.imageScanningConfiguration.scanOnPush, true);
        assert.equal(r.inputs.imageTagMutability, "IMMUTABLE");
      }
    });

    test("outputs give the gateway URL and the dashboard address", () => {
      assert.equal(outputs.gatewayUrl, "http://gw-123.us-east-1.elb.amazonaws.com");
      assert.match(outputs.dashboardUrl, /^https:\/\/us-east-1\.console\.aws\.amazon\.com\/cloudwatch\/.*#dashboards:name=oi-.*-orders-invoices$/);
    });
  });
}

test("no stack file holds a secret in plain text", () => {
  for (const stack of ["dev", "prod"]) {
    const text = fs.readFileSync(path.join(ROOT, `Pulumi.${stack}.yaml`), "utf8");
    for (const key of ["gatewayApiKey", "otlpEndpoint", "otlpHeaders", "password", "Password"]) {
      const line = text.split("\n").find((l) => !l.trim().startsWith("#") && l.includes(`${key}:`));
      assert.ok(!line || /secure:/.test(line), `Pulumi.${stack}.yaml: ${line}`);
    }
  }
});

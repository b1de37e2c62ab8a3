// Security groups of least privilege: the internet reaches only the load balancer, the load
// balancer only Kong, Kong only the nodes, each node only its own database and the broker.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

export const PORTS = { http: 80, https: 443, kongProxy: 8000, kongStatus: 8100, orders: 3333, invoices: 3334, postgres: 5432, amqps: 5671 };

export interface SecurityGroups {
  alb: aws.ec2.SecurityGroup;
  kong: aws.ec2.SecurityGroup;
  orders: aws.ec2.SecurityGroup;
  invoices: aws.ec2.SecurityGroup;
  ordersDb: aws.ec2.SecurityGroup;
  invoicesDb: aws.ec2.SecurityGroup;
  broker: aws.ec2.SecurityGroup;
}

const anywhere = ["0.0.0.0/0"];
const egressAll = [{ protocol: "-1", fromPort: 0, toPort: 0, cidrBlocks: anywhere, description: "outbound (ECR, Secrets Manager, OTLP via NAT)" }];

function from(port: number, peer: aws.ec2.SecurityGroup, description: string) {
  return { protocol: "tcp", fromPort: port, toPort: port, securityGroups: [peer.id], description };
}

export function securityGroups(name: string, vpcId: pulumi.Input<string>): SecurityGroups {
  const sg = (id: string, description: string, ingress: aws.types.input.ec2.SecurityGroupIngress[], egress = egressAll) =>
    new aws.ec2.SecurityGroup(`${name}-${id}`, { vpcId, description, ingress, egress, tags: { Name: `${name}-${id}` } });

  const alb = sg("alb", "public load balancer", [
    { protocol: "tcp", fromPort: PORTS.http, toPort: PORTS.http, cidrBlocks: anywhere, description: "HTTP from the internet" },
    { protocol: "tcp", fromPort: PORTS.https, toPort: PORTS.https, cidrBlocks: anywhere, description: "HTTPS from the internet" },
  ]);
  const kong = sg("kong", "Kong gateway tasks", [
    from(PORTS.kongProxy, alb, "proxy from the load balancer"),
    from(PORTS.kongStatus, alb, "health checks from the load balancer"),
  ]);
  const orders = sg("orders-node", "orders-node tasks", [from(PORTS.orders, kong, "API from Kong only")]);
  const invoices = sg("invoices-node", "invoices-node tasks", [from(PORTS.invoices, kong, "API from Kong only")]);
  const ordersDb = sg("orders-db", "orders database", [from(PORTS.postgres, orders, "PostgreSQL from orders-node only")], []);
  const invoicesDb = sg("invoices-db", "invoices database", [from(PORTS.postgres, invoices, "PostgreSQL from invoices-node only")], []);
  const broker = sg("broker", "Amazon MQ (RabbitMQ)", [
    from(PORTS.amqps, orders, "AMQPS from orders-node"),
    from(PORTS.amqps, invoices, "AMQPS from invoices-node"),
  ], []);
  return { alb, kong, orders, invoices, ordersDb, invoicesDb, broker };
}

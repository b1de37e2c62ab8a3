// The VPC: public subnets hold only the load balancer (and NAT gateways); services and
// data live in private subnets.
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

export interface Network {
  vpc: aws.ec2.Vpc;
  publicSubnets: aws.ec2.Subnet[];
  privateSubnets: aws.ec2.Subnet[];
}

export function network(name: string, azCount: number, natGateways: number): Network {
  const azs = aws.getAvailabilityZonesOutput({ state: "available" });
  const vpc = new aws.ec2.Vpc(`${name}-vpc`, {
    cidrBlock: "10.40.0.0/16",
    enableDnsHostnames: true,
    enableDnsSupport: true,
    tags: { Name: `${name}-vpc` },
  });
  const igw = new aws.ec2.InternetGateway(`${name}-igw`, { vpcId: vpc.id });
  const publicRoutes = new aws.ec2.RouteTable(`${name}-public`, {
    vpcId: vpc.id,
    routes: [{ cidrBlock: "0.0.0.0/0", gatewayId: igw.id }],
  });

  const publicSubnets: aws.ec2.Subnet[] = [];
  const privateSubnets: aws.ec2.Subnet[] = [];
  const nats: aws.ec2.NatGateway[] = [];
  for (let i = 0; i < azCount; i++) {
    const az = azs.names.apply((names) => names[i % names.length]);
    const pub = new aws.ec2.Subnet(`${name}-public-${i}`, {
      vpcId: vpc.id,
      availabilityZone: az,
      cidrBlock: `10.40.${i}.0/24`,
      mapPublicIpOnLaunch: false,
      tags: { Name: `${name}-public-${i}`, tier: "public" },
    });
    new aws.ec2.RouteTableAssociation(`${name}-public-${i}`, { subnetId: pub.id, routeTableId: publicRoutes.id });
    publicSubnets.push(pub);
    if (i < Math.max(1, natGateways)) {
      const eip = new aws.ec2.Eip(`${name}-nat-${i}`, { domain: "vpc" });
      nats.push(new aws.ec2.NatGateway(`${name}-nat-${i}`, { subnetId: pub.id, allocationId: eip.id }));
    }
  }
  for (let i = 0; i < azCount; i++) {
    const az = azs.names.apply((names) => names[i % names.length]);
    const priv = new aws.ec2.Subnet(`${name}-private-${i}`, {
      vpcId: vpc.id,
      availabilityZone: az,
      cidrBlock: `10.40.${100 + i}.0/24`,
      mapPublicIpOnLaunch: false,
      tags: { Name: `${name}-private-${i}`, tier: "private" },
    });
    const routes = new aws.ec2.RouteTable(`${name}-private-${i}`, {
      vpcId: vpc.id,
      routes: [{ cidrBlock: "0.0.0.0/0", natGatewayId: nats[i % nats.length].id }],
    });
    new aws.ec2.RouteTableAssociation(`${name}-private-${i}`, { subnetId: priv.id, routeTableId: routes.id });
    privateSubnets.push(priv);
  }
  return { vpc, publicSubnets, privateSubnets };
}

export const ids = (subnets: aws.ec2.Subnet[]): pulumi.Output<string>[] => subnets.map((s) => s.id);

// Entry point of the Pulumi program: `pulumi up` in this folder (see the README).
import { loadConfig } from "./src/config";
import { deploy } from "./src/infra";

const out = deploy(loadConfig());

export const gatewayUrl = out.gatewayUrl;
export const dashboardUrl = out.dashboardUrl;
export const logsUrl = out.logsUrl;
export const repositories = out.repositories;

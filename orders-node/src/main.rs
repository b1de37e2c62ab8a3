//! orders-node: see the crate documentation and the README.

use std::process::ExitCode;

use actors::config::Vars;
use orders_node::{OrdersConfig, OrdersNode};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match OrdersConfig::from_vars(&Vars::from_env()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("orders-node: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = actors::telemetry::init(&config.common) {
        eprintln!("orders-node: {e}");
        return ExitCode::from(2);
    }
    let node = match OrdersNode::build(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("orders-node: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match node.run_until_signal().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

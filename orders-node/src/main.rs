//! orders-node: see the crate documentation and the README.

use orders_node::{NODE_NAME, OrdersConfig, OrdersNode};

fn main() -> std::process::ExitCode {
    actors::node::run_main(
        NODE_NAME,
        OrdersConfig::from_vars,
        |c| &c.common,
        |config| async {
            OrdersNode::build(config)
                .await
                .map(OrdersNode::into_running)
        },
    )
}

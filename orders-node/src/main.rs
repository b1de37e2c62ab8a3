//! orders-node: see the crate documentation and the README.

use orders_node::{NODE_NAME, OrdersConfig, OrdersNode};

// glibc's allocator cost a node ~14% of its CPU under load (profile: malloc, free and
// their consolidation); mimalloc's thread-local free lists cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
    .await
}

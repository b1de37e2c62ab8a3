//! invoices-node: see the crate documentation and the README.

use invoices_node::{InvoicesConfig, InvoicesNode, NODE_NAME};

fn main() -> std::process::ExitCode {
    actors::node::run_main(
        NODE_NAME,
        InvoicesConfig::from_vars,
        |c| &c.common,
        |config| async {
            InvoicesNode::build(config)
                .await
                .map(InvoicesNode::into_running)
        },
    )
}

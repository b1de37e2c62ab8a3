//! invoices-node: see the crate documentation and the README.

use invoices_node::{InvoicesConfig, InvoicesNode, NODE_NAME};

// glibc's allocator cost a node ~14% of its CPU under load (profile: malloc, free and
// their consolidation); mimalloc's thread-local free lists cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
    .await
}

//! `ops`: one entry point for operators.
//!
//! | command | module |
//! |---|---|
//! | `ops drill` — crash, panic, broker, database, poison and SIGTERM faults under load, then every promise checked | [`drill`] |
//! | `ops dlq list/show/replay/purge` — what sits in a dead-letter queue, and putting it back | [`dlq`] |
//! | `ops bench` — the pipeline benchmark (`ops/bench/pipeline`) | [`bench`] |

mod amqp;
mod bench;
mod dlq;
mod drill;
mod error;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::OpsError;

#[derive(Parser)]
#[command(
    name = "ops",
    version,
    about = "Operators' tool for the orders and invoices system"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inject faults into a running system under load, then check every promise it makes.
    Drill(Box<drill::DrillArgs>),
    /// Inspect, replay or purge a dead-letter queue.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Run the pipeline benchmark (ops/bench/pipeline); arguments are passed on.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Drill(args) => runtime().and_then(|rt| rt.block_on(drill::run(*args))),
        Command::Dlq(command) => runtime().and_then(|rt| rt.block_on(dlq::run(command))),
        Command::Bench(args) => bench::run(args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ops: {e}");
            ExitCode::from(2)
        }
    }
}

/// tokio's default runtime, one worker per CPU, built without consulting
/// `TOKIO_WORKER_THREADS`: that variable is the nodes' setting (the nodes a drill starts
/// inherit it and check it), and tokio would panic on a value it cannot parse.
fn runtime() -> Result<tokio::runtime::Runtime, OpsError> {
    actors::node::runtime(actors::config::default_worker_threads())
        .map_err(OpsError::io("cannot start the async runtime"))
}

//! `ops drill`: steady load, faults at seeded random moments, then every promise checked.
//!
//! | module | what it holds |
//! |---|---|
//! | [`system`] | the replicas (started here, or given by URL), the databases and the broker |
//! | [`load`] | orders with a share of cancels and payments, and the ledger of answers |
//! | [`faults`] | each fault kind and how its recovery is measured |
//! | [`checks`] | the invariants, checked once the system settled |
//! | [`report`] | the table, JSON and Markdown |

mod checks;
mod faults;
mod load;
mod report;
mod rng;
mod system;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use crate::OpsError;
use crate::amqp::Broker;
use faults::{FaultKind, Injector, PoisonSent};
use system::{LocalPlan, Node, System};

#[derive(Args)]
pub struct DrillArgs {
    /// Replicas of each node (local mode).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// How long the load runs (faults fall inside it).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Orders per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Fault kinds, comma-separated: kill, panic, broker, db, poison, term.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,panic,broker,db,poison,term"
    )]
    faults: Vec<FaultKind>,
    /// How many faults (default: one per 10 s of load, at least one of each kind).
    #[arg(long)]
    count: Option<usize>,
    /// Seed of the fault plan (default: from the clock; the report prints it).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the JSON report goes; the Markdown one goes beside it (.md).
    #[arg(long, default_value = "target/drill-report.json")]
    report: PathBuf,
    /// The broker fault stops and starts the whole RabbitMQ application (every vhost!).
    #[arg(long)]
    broker_restart: bool,
    /// Local mode: where orders-node and invoices-node are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Local mode: a superuser connection, for making and dropping the drill's databases.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_admin_url: String,
    /// Local mode: the broker, without a vhost (the drill makes its own).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672")]
    amqp_base: String,
    /// Drill an existing deployment: its orders-node replicas (comma-separated URLs).
    #[arg(long, value_delimiter = ',', requires_all = ["invoices_url", "amqp_url", "orders_db", "invoices_db"])]
    orders_url: Vec<String>,
    /// …its invoices-node replicas.
    #[arg(long, value_delimiter = ',')]
    invoices_url: Vec<String>,
    /// …its broker, with the nodes' vhost.
    #[arg(long)]
    amqp_url: Option<String>,
    /// …orders-node's database (a role that may terminate sessions and alter the database).
    #[arg(long)]
    orders_db: Option<String>,
    /// …invoices-node's database.
    #[arg(long)]
    invoices_db: Option<String>,
}

/// The fault plan: when, and which kind, spread over the middle of the run.
fn plan(
    kinds: &[FaultKind],
    count: usize,
    duration: Duration,
    rng: &mut rng::Rng,
) -> Vec<(Duration, FaultKind)> {
    // Every kind once per round, in a fresh seeded order each round.
    let mut order: Vec<FaultKind> = Vec::with_capacity(count);
    while order.len() < count {
        let mut round = kinds.to_vec();
        for i in (1..round.len()).rev() {
            round.swap(i, rng.below(i + 1));
        }
        order.extend(round);
    }
    let (first, last) = (duration.as_secs_f64() * 0.1, duration.as_secs_f64() * 0.8);
    let step = (last - first) / count.max(1) as f64;
    (0..count)
        .map(|i| {
            let at = first + step * (i as f64 + rng.unit() * 0.5);
            (Duration::from_secs_f64(at), order[i])
        })
        .collect()
}

pub async fn run(args: DrillArgs) -> Result<ExitCode, OpsError> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let remote = !args.orders_url.is_empty();
    let mut kinds: Vec<FaultKind> = args.faults.clone();
    kinds.dedup();
    if remote && kinds.iter().any(|k| k.needs_local()) {
        eprintln!(
            "[drill] kill and term need replicas started by the drill; skipped against a deployment"
        );
        kinds.retain(|k| !k.needs_local());
    }
    let count = args
        .count
        .unwrap_or_else(|| ((args.duration.as_secs() / 10) as usize).max(kinds.len()));
    let mut rng = rng::Rng::new(seed);
    let schedule = if kinds.is_empty() {
        Vec::new()
    } else {
        plan(&kinds, count, args.duration, &mut rng)
    };

    let mut system = if remote {
        let need = |v: &Option<String>, name: &str| {
            v.clone()
                .ok_or_else(|| OpsError::Usage(format!("--{name} is needed with --orders-url")))
        };
        System::remote(
            args.orders_url.clone(),
            args.invoices_url.clone(),
            need(&args.amqp_url, "amqp-url")?,
            need(&args.orders_db, "orders-db")?,
            need(&args.invoices_db, "invoices-db")?,
        )?
    } else {
        eprintln!(
            "[drill] starting {} replica(s) of each node from {}",
            args.replicas,
            args.bin_dir.display()
        );
        System::local(LocalPlan {
            replicas: args.replicas.max(1),
            bin_dir: &args.bin_dir,
            pg_admin_url: &args.pg_admin_url,
            amqp_base: &args.amqp_base,
            logs: args.report.with_extension("logs"),
        })
        .await?
    };
    let outcome = drill(&args, &mut system, &schedule, seed, rng, remote).await;
    if outcome.is_err()
        && let Some(scratch) = &system.scratch
    {
        eprintln!("[drill] replica logs: {}", scratch.logs.display());
    }
    system.tear_down().await;
    outcome
}

async fn drill(
    args: &DrillArgs,
    system: &mut System,
    schedule: &[(Duration, FaultKind)],
    seed: u64,
    rng: rng::Rng,
    remote: bool,
) -> Result<ExitCode, OpsError> {
    if system
        .wait_all_ready(Duration::from_secs(60))
        .await
        .is_none()
    {
        return Err(OpsError::Setup(
            "the replicas were not ready within 60 s".into(),
        ));
    }
    let tap = {
        let broker = Broker::connect(&system.amqp_url).await?;
        let tap = faults::declare_tap(&broker).await?;
        broker.close().await;
        tap
    };
    eprintln!(
        "[drill] seed {seed}: {} fault(s) over {:?} at {} orders/s",
        schedule.len(),
        args.duration,
        args.rate
    );
    let started = Instant::now();
    let urls = |node| {
        system
            .replicas_of(node)
            .map(|r| r.url.clone())
            .collect::<Vec<_>>()
    };
    let load = load::Load::start(
        system.http.clone(),
        urls(Node::Orders),
        urls(Node::Invoices),
        args.rate,
        seed,
        started,
    );
    let mut injector = Injector {
        system,
        tap: &tap,
        rng,
        broker_restart: args.broker_restart,
        started,
        poison: PoisonSent::default(),
    };
    let mut done = Vec::new();
    for (at, kind) in schedule {
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let fault = injector.inject(*kind).await;
        eprintln!(
            "[drill] {:>6.1}s {:<6} {:<45} recovered in {} ({} orders so far){}",
            fault.at.as_secs_f64(),
            fault.kind.name(),
            fault.target,
            fault
                .recovery
                .map_or("—".into(), |d| format!("{} ms", d.as_millis())),
            load.accepted_so_far(),
            if fault.problems.is_empty() {
                String::new()
            } else {
                format!(" — {}", fault.problems.join("; "))
            }
        );
        done.push(fault);
    }
    let poison = std::mem::take(&mut injector.poison);
    drop(injector);
    if let Some(wait) = args.duration.checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    let ledger = load.stop().await;
    eprintln!(
        "[drill] load stopped: {} orders accepted; checking",
        ledger.accepted.len()
    );
    let broker = Broker::connect(&system.amqp_url).await?;
    let findings = checks::check(system, &broker, &ledger, &done, &poison).await?;
    let _ = broker
        .channel
        .queue_delete(tap.as_str().into(), Default::default())
        .await;
    broker.close().await;

    let run = report::Run {
        seed,
        duration: args.duration,
        rate: args.rate,
        replicas: if remote {
            system.replicas_of(Node::Orders).count()
        } else {
            args.replicas
        },
        mode: if remote { "deployment" } else { "local" },
    };
    let json = report::to_json(&run, &ledger, &done, &findings);
    let markdown = report::to_markdown(&run, &ledger, &done, &findings);
    report::write(&args.report, &json, &markdown)?;
    println!("{markdown}");
    println!(
        "report: {} and {}",
        args.report.display(),
        args.report.with_extension("md").display()
    );
    Ok(if report::passed(&findings) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::faults::ALL_KINDS;
    use super::*;

    #[test]
    fn the_plan_covers_every_kind_inside_the_run_and_repeats_with_its_seed() {
        let d = Duration::from_secs(60);
        let a = plan(&ALL_KINDS, 6, d, &mut rng::Rng::new(42));
        let b = plan(&ALL_KINDS, 6, d, &mut rng::Rng::new(42));
        assert_eq!(a, b);
        let kinds: std::collections::BTreeSet<_> = a.iter().map(|(_, k)| *k).collect();
        assert_eq!(kinds.len(), 6);
        assert!(
            a.iter()
                .all(|(at, _)| *at > Duration::from_secs(5) && *at < d)
        );
        assert!(a.windows(2).all(|w| w[0].0 < w[1].0));
    }
}

//! After the load stops: wait for the system to settle, then check every promise against
//! the databases, the broker and what the drill was told.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use contracts::topology;
use uuid::Uuid;

use super::faults::{Fault, FaultKind, PoisonSent};
use super::load::{Intent, Ledger};
use super::system::{Node, System};
use crate::OpsError;
use crate::amqp::Broker;
use crate::dlq;

/// How long the system gets to finish what it accepted once the load stopped.
const SETTLE_BOUND: Duration = Duration::from_secs(120);

/// One invariant: held or not, and what was seen.
#[derive(Debug, Clone)]
pub struct Invariant {
    pub held: bool,
    pub detail: String,
}

pub struct Findings {
    pub lost: BTreeSet<Uuid>,
    pub duplicated: BTreeSet<Uuid>,
    pub invariants: BTreeMap<&'static str, Invariant>,
}

impl Findings {
    /// Holds when nothing went wrong: `fine` says what was seen, else the problems do.
    fn unless(&mut self, name: &'static str, problems: &[String], fine: impl Into<String>) {
        let detail = match problems {
            [] => fine.into(),
            [one] => one.clone(),
            [first, rest @ ..] => format!("{} problems, e.g. {first}", rest.len() + 1),
        };
        self.set(name, problems.is_empty(), detail);
    }

    fn set(&mut self, name: &'static str, held: bool, detail: impl Into<String>) {
        self.invariants.insert(
            name,
            Invariant {
                held,
                detail: detail.into(),
            },
        );
    }
}

/// The state an order and its invoice may end in, given what the drill did.
fn allowed(intent: Intent) -> &'static [(&'static str, &'static str)] {
    const INVOICED: (&str, &str) = ("invoiced", "issued");
    const CANCELED: (&str, &str) = ("canceled", "void");
    const PAID: (&str, &str) = ("paid", "paid");
    match intent {
        Intent::Nothing => &[INVOICED],
        Intent::Canceled => &[CANCELED],
        Intent::Paid => &[PAID],
        Intent::Unsure => &[INVOICED, CANCELED, PAID],
    }
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> Result<i64, OpsError> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Waits until nothing is pending anywhere: every order past `pending`, both outboxes
/// drained, both consumed queues empty.
async fn settle(system: &System, broker: &Broker) -> Result<Option<Duration>, OpsError> {
    let orders = system.pool(Node::Orders).await?;
    let invoices = system.pool(Node::Invoices).await?;
    let started = Instant::now();
    let outcome = loop {
        let pending = count(
            &orders,
            "SELECT count(*) FROM orders WHERE status = 'pending'",
        )
        .await?;
        let unpublished = count(
            &orders,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await?
            + count(
                &invoices,
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            )
            .await?;
        let ready = broker.ready_count(topology::INVOICES_NODE_QUEUE).await?
            + broker.ready_count(topology::ORDERS_NODE_QUEUE).await?;
        if pending == 0 && unpublished == 0 && ready == 0 {
            break Some(started.elapsed());
        }
        if started.elapsed() > SETTLE_BOUND {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    orders.close().await;
    invoices.close().await;
    Ok(outcome)
}

pub async fn check(
    system: &mut System,
    broker: &Broker,
    ledger: &Ledger,
    faults: &[Fault],
    poison: &PoisonSent,
) -> Result<Findings, OpsError> {
    let mut f = Findings {
        lost: BTreeSet::new(),
        duplicated: BTreeSet::new(),
        invariants: BTreeMap::new(),
    };
    let settled = settle(system, broker).await?;
    f.set(
        "system_settled",
        settled.is_some(),
        settled.map_or(
            format!("still busy after {}s", SETTLE_BOUND.as_secs()),
            |d| format!("settled {} ms after the load stopped", d.as_millis()),
        ),
    );

    let orders_db = system.pool(Node::Orders).await?;
    let invoices_db = system.pool(Node::Invoices).await?;
    let orders: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, status FROM orders")
            .fetch_all(&orders_db)
            .await?
            .into_iter()
            .collect();
    let mut invoices: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (order, status) in
        sqlx::query_as::<_, (Uuid, String)>("SELECT order_id, status FROM invoices")
            .fetch_all(&invoices_db)
            .await?
    {
        invoices.entry(order).or_default().push(status);
    }

    // Every 201 is an order; every order has exactly one invoice.
    let missing: Vec<&Uuid> = ledger
        .accepted
        .keys()
        .filter(|id| !orders.contains_key(id))
        .collect();
    f.lost.extend(missing.iter().copied());
    f.set(
        "every_accepted_order_exists",
        missing.is_empty(),
        format!(
            "{} accepted, {} missing",
            ledger.accepted.len(),
            missing.len()
        ),
    );
    let without: Vec<&Uuid> = orders
        .keys()
        .filter(|id| !invoices.contains_key(id))
        .collect();
    let several: Vec<&Uuid> = invoices
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(id, _)| id)
        .collect();
    let strays = invoices
        .keys()
        .filter(|id| !orders.contains_key(id))
        .count();
    f.lost.extend(
        without
            .iter()
            .copied()
            .filter(|id| ledger.accepted.contains_key(id)),
    );
    f.duplicated.extend(several.iter().copied());
    f.set(
        "exactly_one_invoice_per_order",
        without.is_empty() && several.is_empty() && strays == 0,
        format!(
            "{} orders, {} without an invoice, {} with several, {} invoices of unknown orders",
            orders.len(),
            without.len(),
            several.len(),
            strays
        ),
    );

    // Each order agrees with its invoice and with what the drill did to it.
    let mut disagree = Vec::new();
    for (id, status) in &orders {
        let intent = ledger.accepted.get(id).map_or(Intent::Unsure, |a| a.intent);
        let Some([invoice]) = invoices.get(id).map(Vec::as_slice) else {
            continue;
        };
        if !allowed(intent).contains(&(status.as_str(), invoice.as_str())) {
            disagree.push(format!(
                "{id}: order {status}, invoice {invoice}, drill {intent:?}"
            ));
        }
    }
    f.unless(
        "states_agree",
        &disagree,
        "every order agrees with its invoice and the drill's actions",
    );

    let unpublished = count(
        &orders_db,
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
    )
    .await?
        + count(
            &invoices_db,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await?;
    f.set(
        "outboxes_drained",
        unpublished == 0,
        format!("{unpublished} unpublished or parked rows"),
    );
    orders_db.close().await;
    invoices_db.close().await;

    // The DLQs hold the poison and nothing else.
    let mut dlq_problems = Vec::new();
    for queue in [topology::INVOICES_NODE_QUEUE, topology::ORDERS_NODE_QUEUE] {
        let dlq_name = topology::dead_letter_queue(queue);
        let held: BTreeSet<String> = dlq::dead_letters(broker, &dlq_name, 1000)
            .await?
            .into_iter()
            .map(|l| l.message_id.unwrap_or_else(|| l.position.clone()))
            .collect();
        let sent: BTreeSet<String> = poison
            .by_dlq
            .get(&dlq_name)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        if held != sent {
            dlq_problems.push(format!(
                "{dlq_name}: holds {} (expected {}), e.g. unexpected {:?}",
                held.len(),
                sent.len(),
                held.difference(&sent).next()
            ));
        }
    }
    f.unless(
        "dlqs_hold_exactly_the_poison",
        &dlq_problems,
        format!(
            "{} poison message(s), all dead-lettered, nothing else",
            poison.by_dlq.values().map(Vec::len).sum::<usize>()
        ),
    );

    // Nothing unacknowledged: once the consumers are gone, anything they held would be
    // back in the queue. Local mode stops its replicas here (each must exit 0).
    let local = system.replicas.iter().any(|r| r.is_local());
    let mut exits = Vec::new();
    if local {
        for r in &mut system.replicas {
            let label = r.label();
            let code = r.terminate(Duration::from_secs(30)).await;
            if code != Some(0) {
                exits.push(format!("{label} exited with {code:?}"));
            }
        }
        f.unless(
            "replicas_stop_cleanly",
            &exits,
            "every replica exited 0 on SIGTERM",
        );
    }
    let left = broker.ready_count(topology::INVOICES_NODE_QUEUE).await?
        + broker.ready_count(topology::ORDERS_NODE_QUEUE).await?;
    f.set(
        "queues_empty_nothing_unacked",
        left == 0,
        if local {
            format!("{left} message(s) left after every consumer stopped")
        } else {
            format!("{left} ready message(s) (unacknowledged ones are not visible remotely)")
        },
    );

    let slow: Vec<String> = faults
        .iter()
        .filter(|x| x.recovery.is_none())
        .map(|x| format!("{} {}", x.kind.name(), x.target))
        .collect();
    f.unless(
        "replicas_ready_after_every_fault",
        &slow,
        format!(
            "{} fault(s), every replica ready again each time",
            faults.len()
        ),
    );
    let unseen: Vec<String> = faults
        .iter()
        .filter(|x| x.kind == FaultKind::Panic)
        .flat_map(|x| x.problems.iter().cloned())
        .collect();
    f.unless(
        "restarts_visible",
        &unseen,
        "every injected panic showed as a restart in /actors and actor_restarts_total",
    );
    let other: Vec<String> = faults
        .iter()
        .filter(|x| x.kind != FaultKind::Panic)
        .flat_map(|x| {
            x.problems
                .iter()
                .map(move |p| format!("{}: {p}", x.kind.name()))
        })
        .filter(|p| !p.contains("not all ready"))
        .collect();
    f.unless(
        "faults_behaved",
        &other,
        "every fault was injected and every SIGTERM exited 0",
    );

    // No 5xx but a 503 while a database was away.
    let away: Vec<(Duration, Duration)> = faults
        .iter()
        .filter(|x| x.database_away)
        .map(Fault::window)
        .collect();
    let bad: Vec<String> = ledger
        .failures
        .iter()
        .filter_map(|x| {
            let status = x.status?;
            let excused = status == 503 && away.iter().any(|(a, b)| x.at >= *a && x.at <= *b);
            (!excused).then(|| format!("{status} on {} at {:.1}s", x.route, x.at.as_secs_f64()))
        })
        .collect();
    f.unless("no_5xx_but_503_while_database_away", &bad, "none");
    Ok(f)
}

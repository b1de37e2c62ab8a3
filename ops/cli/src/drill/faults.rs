//! The faults a drill injects, and how each one's recovery is measured.

use std::str::FromStr;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use actors::faults::ACTORS;
use contracts::topology;

use super::rng::Rng;
use super::system::{Node, System, quote_ident, rabbitmqctl};
use crate::OpsError;
use crate::amqp::Broker;

/// How long a replica may take to be ready again after a fault.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(60);
/// How long the database stays unreachable in a `db` fault.
const DB_AWAY: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL of a replica, then a restart (local mode).
    Kill,
    /// A panic inside a chosen actor, through `POST /faults/panic/{actor}`.
    Panic,
    /// The vhost's broker connections closed (or, with --broker-restart, the broker
    /// application stopped and started).
    Broker,
    /// The node's database sessions terminated and new ones refused for a few seconds.
    Db,
    /// Undecodable messages and duplicates of real events published.
    Poison,
    /// SIGTERM of a replica under load, then a restart (local mode).
    Term,
}

pub const ALL_KINDS: [FaultKind; 6] = [
    FaultKind::Kill,
    FaultKind::Panic,
    FaultKind::Broker,
    FaultKind::Db,
    FaultKind::Poison,
    FaultKind::Term,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Panic => "panic",
            FaultKind::Broker => "broker",
            FaultKind::Db => "db",
            FaultKind::Poison => "poison",
            FaultKind::Term => "term",
        }
    }

    /// Whether the fault needs processes the drill started itself.
    pub fn needs_local(self) -> bool {
        matches!(self, FaultKind::Kill | FaultKind::Term)
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL_KINDS
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown fault {s:?} (kill, panic, broker, db, poison, term)"))
    }
}

/// One injected fault and what followed.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub target: String,
    /// Since the drill started.
    pub at: Duration,
    /// From the injection until every replica was ready again (`None`: not within the bound).
    pub recovery: Option<Duration>,
    /// The database was away during this fault (the only time a 503 is expected).
    pub database_away: bool,
    /// Something the fault itself expected did not happen (e.g. a restart not visible).
    pub problems: Vec<String>,
}

impl Fault {
    /// The span of the drill this fault is responsible for.
    pub fn window(&self) -> (Duration, Duration) {
        let end = self.at + self.recovery.unwrap_or(RECOVERY_BOUND) + Duration::from_secs(1);
        (self.at, end)
    }
}

/// Poison the drill published, per dead-letter queue.
#[derive(Debug, Default, Clone)]
pub struct PoisonSent {
    pub by_dlq: std::collections::BTreeMap<String, Vec<String>>,
}

/// A queue that keeps the last events of both exchanges, for publishing duplicates. It
/// outlives the drill's own connections (a broker fault closes them too) and expires an
/// hour after the drill stopped using it.
pub async fn declare_tap(broker: &Broker) -> Result<String, OpsError> {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(50));
    args.insert("x-expires".into(), AMQPValue::LongLongInt(3_600_000));
    let name = format!("ops-drill-tap-{}", std::process::id());
    let q = broker
        .channel
        .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
        .await?;
    for (exchange, pattern) in [
        (topology::ORDERS_EXCHANGE, topology::ORDER_EVENTS_PATTERN),
        (
            topology::INVOICES_EXCHANGE,
            topology::INVOICE_EVENTS_PATTERN,
        ),
    ] {
        // As the nodes declare it (they may not have connected yet).
        broker
            .channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        broker
            .channel
            .queue_bind(
                q.name().clone(),
                exchange.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(q.name().to_string())
}

pub struct Injector<'a> {
    pub system: &'a mut System,
    pub tap: &'a str,
    pub rng: Rng,
    pub broker_restart: bool,
    pub started: Instant,
    pub poison: PoisonSent,
}

impl Injector<'_> {
    pub async fn inject(&mut self, kind: FaultKind) -> Fault {
        let at = self.started.elapsed();
        let mut fault = Fault {
            kind,
            target: String::new(),
            at,
            recovery: None,
            database_away: false,
            problems: Vec::new(),
        };
        let outcome = match kind {
            FaultKind::Kill => self.kill(&mut fault).await,
            FaultKind::Term => self.term(&mut fault).await,
            FaultKind::Panic => self.panic(&mut fault).await,
            FaultKind::Broker => self.broker_fault(&mut fault).await,
            FaultKind::Db => self.db(&mut fault).await,
            FaultKind::Poison => self.poison(&mut fault).await,
        };
        if let Err(e) = outcome {
            fault.problems.push(format!("could not inject: {e}"));
            fault.recovery = self.since(Instant::now()).await;
        }
        if fault.recovery.is_none() {
            fault.problems.push(format!(
                "replicas not all ready within {}s",
                RECOVERY_BOUND.as_secs()
            ));
        }
        fault
    }

    fn pick_local(&mut self) -> Option<usize> {
        let local: Vec<usize> = (0..self.system.replicas.len())
            .filter(|&i| self.system.replicas[i].is_local())
            .collect();
        (!local.is_empty()).then(|| local[self.rng.below(local.len())])
    }

    async fn since(&self, from: Instant) -> Option<Duration> {
        self.system
            .wait_all_ready(RECOVERY_BOUND)
            .await
            .map(|_| from.elapsed())
    }

    async fn kill(&mut self, fault: &mut Fault) -> Result<(), OpsError> {
        let i = self
            .pick_local()
            .ok_or_else(|| OpsError::Usage("kill needs replicas started by the drill".into()))?;
        let from = Instant::now();
        let replica = &mut self.system.replicas[i];
        fault.target = replica.label();
        replica.kill().await;
        replica.restart()?;
        fault.recovery = self.since(from).await;
        Ok(())
    }

    async fn term(&mut self, fault: &mut Fault) -> Result<(), OpsError> {
        let i = self
            .pick_local()
            .ok_or_else(|| OpsError::Usage("term needs replicas started by the drill".into()))?;
        let from = Instant::now();
        let replica = &mut self.system.replicas[i];
        fault.target = replica.label();
        match replica.terminate(Duration::from_secs(20)).await {
            Some(0) => {}
            other => fault
                .problems
                .push(format!("SIGTERM: exit code {other:?}, expected 0")),
        }
        replica.restart()?;
        fault.recovery = self.since(from).await;
        Ok(())
    }

    async fn panic(&mut self, fault: &mut Fault) -> Result<(), OpsError> {
        let i = self.rng.below(self.system.replicas.len());
        let actor = ACTORS[self.rng.below(ACTORS.len())];
        let (url, node) = {
            let r = &self.system.replicas[i];
            fault.target = format!("{} {actor}", r.label());
            (r.url.clone(), r.node)
        };
        let before = restarts(&self.system.http, &url, node, actor).await?;
        let from = Instant::now();
        let resp = self
            .system
            .http
            .post(format!("{url}/faults/panic/{actor}"))
            .send()
            .await?;
        if resp.status().as_u16() != 202 {
            fault.problems.push(format!(
                "POST /faults/panic/{actor} answered {} (is FAULT_INJECTION=on?)",
                resp.status()
            ));
            fault.recovery = self.since(from).await;
            return Ok(());
        }
        // The restart must show in both /actors and actor_restarts_total.
        let deadline = Instant::now() + RECOVERY_BOUND;
        let mut seen = false;
        while Instant::now() < deadline {
            // A crashed intake closes the connections it had: an error here means "not yet".
            if let Ok(now) = restarts(&self.system.http, &url, node, actor).await
                && now.tree > before.tree
                && now.metric > before.metric
            {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !seen {
            fault.problems.push(format!(
                "the restart of {actor} did not show in /actors and actor_restarts_total"
            ));
        }
        fault.recovery = self.since(from).await;
        Ok(())
    }

    async fn broker_fault(&mut self, fault: &mut Fault) -> Result<(), OpsError> {
        let vhost = vhost_of(&self.system.amqp_url);
        let from = Instant::now();
        if self.broker_restart {
            fault.target = "broker application (stop_app, start_app)".into();
            rabbitmqctl(&["stop_app"])?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            rabbitmqctl(&["start_app"])?;
        } else {
            fault.target = format!("connections of vhost {vhost}");
            rabbitmqctl(&[
                "close_all_connections",
                "-p",
                &vhost,
                "ops drill: broker connections closed",
            ])?;
        }
        // Give the nodes a moment to notice, then wait for both links of every replica.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let deadline = Instant::now() + RECOVERY_BOUND;
        while Instant::now() < deadline {
            if self.all_broker_connected().await {
                fault.recovery = self.since(from).await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn all_broker_connected(&self) -> bool {
        for r in &self.system.replicas {
            let url = format!("{}/health/ready", r.url);
            let Ok(resp) = self.system.http.get(url).send().await else {
                return false;
            };
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if body["checks"]["broker"] != "connected" {
                return false;
            }
        }
        true
    }

    async fn db(&mut self, fault: &mut Fault) -> Result<(), OpsError> {
        let node = if self.rng.below(2) == 0 {
            Node::Orders
        } else {
            Node::Invoices
        };
        let url = match node {
            Node::Orders => &self.system.orders_db,
            Node::Invoices => &self.system.invoices_db,
        };
        let db = database_of(url);
        fault.target = format!("database {db} of {}", node.name());
        fault.database_away = true;
        // An admin session on another database (one cannot refuse connections to the
        // database it is connected to), opened before this one refuses new sessions.
        let admin_url = self
            .system
            .scratch
            .as_ref()
            .map_or_else(|| with_database(url, "postgres"), |s| s.admin_db.clone());
        let mut admin = PgConnection::connect(&admin_url).await?;
        let from = Instant::now();
        let allow = |on: bool| {
            sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {on}",
                quote_ident(&db)
            ))
        };
        sqlx::raw_sql(allow(false)).execute(&mut admin).await?;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&db)
        .execute(&mut admin)
        .await?;
        tokio::time::sleep(DB_AWAY).await;
        sqlx::raw_sql(allow(true)).execute(&mut admin).await?;
        let _ = admin.close().await;
        fault.recovery = self.since(from).await;
        Ok(())
    }

    async fn poison(&mut self, fault: &mut Fault) -> Result<(), OpsError> {
        fault.target = "both consumed queues".into();
        let from = Instant::now();
        let broker = Broker::connect(&self.system.amqp_url).await?;
        let outcome = self.publish_poison(&broker, fault).await;
        broker.close().await;
        outcome?;
        fault.recovery = self.since(from).await;
        Ok(())
    }

    async fn publish_poison(&mut self, broker: &Broker, fault: &mut Fault) -> Result<(), OpsError> {
        for (exchange, key, queue) in [
            (
                topology::ORDERS_EXCHANGE,
                topology::ORDER_CREATED,
                topology::INVOICES_NODE_QUEUE,
            ),
            (
                topology::INVOICES_EXCHANGE,
                topology::INVOICE_ISSUED,
                topology::ORDERS_NODE_QUEUE,
            ),
        ] {
            let id = format!("poison-{}", uuid::Uuid::new_v4());
            let props = BasicProperties::default()
                .with_content_type(topology::CONTENT_TYPE.into())
                .with_message_id(id.as_str().into())
                .with_type(key.into())
                .with_delivery_mode(2);
            // Not MessagePack at all: the consumer dead-letters it at once.
            broker
                .publish(exchange, key, b"\xc1 this is not an event", props)
                .await?;
            self.poison
                .by_dlq
                .entry(topology::dead_letter_queue(queue))
                .or_default()
                .push(id);
        }
        // Duplicates: real events, published again exactly as they were.
        let mut duplicates = 0;
        for _ in 0..5 {
            let got = broker
                .channel
                .basic_get(self.tap.into(), BasicGetOptions { no_ack: true })
                .await?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            if broker
                .publish(
                    delivery.exchange.as_str(),
                    delivery.routing_key.as_str(),
                    &delivery.data,
                    delivery.properties.clone(),
                )
                .await?
            {
                duplicates += 1;
            }
        }
        fault.target = format!("both consumed queues (2 poison, {duplicates} duplicates)");
        Ok(())
    }
}

/// Restarts of an actor (and everything under it), as `/actors` and the metric tell.
struct Restarts {
    tree: u64,
    metric: f64,
}

async fn restarts(
    http: &reqwest::Client,
    url: &str,
    node: Node,
    actor: &str,
) -> Result<Restarts, OpsError> {
    let tree: Value = http
        .get(format!("{url}/actors"))
        .send()
        .await?
        .json()
        .await?;
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let path = format!("{}/{actor}", node.name());
    let metric = metrics
        .lines()
        .filter(|l| l.starts_with("actor_restarts_total{"))
        .filter_map(|l| {
            let label = l.split("actor=\"").nth(1)?.split('"').next()?;
            let counted = label == path || label.starts_with(&format!("{path}/"));
            let value: f64 = l.rsplit(' ').next()?.parse().ok()?;
            counted.then_some(value)
        })
        .sum();
    Ok(Restarts {
        tree: find(&tree["actors"], actor).map_or(0, subtree_restarts),
        metric,
    })
}

fn find<'a>(actors: &'a Value, name: &str) -> Option<&'a Value> {
    actors.as_array()?.iter().find_map(|a| {
        if a["name"] == name {
            Some(a)
        } else {
            find(&a["children"], name)
        }
    })
}

fn subtree_restarts(actor: &Value) -> u64 {
    actor["restarts"].as_u64().unwrap_or(0)
        + actor["children"]
            .as_array()
            .map_or(0, |c| c.iter().map(subtree_restarts).sum())
}

/// The vhost of an AMQP URL (`/` when none is given).
pub fn vhost_of(url: &str) -> String {
    let path = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split_once('/')
        .map_or("", |(_, p)| p);
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() {
        "/".into()
    } else {
        path.replace("%2f", "/").replace("%2F", "/")
    }
}

/// The same PostgreSQL URL (host, role, options) on another database.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// The database name of a PostgreSQL URL.
pub fn database_of(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_out_of_urls() {
        assert_eq!(vhost_of("amqp://g:g@h:5672/drill-1"), "drill-1");
        assert_eq!(vhost_of("amqp://g:g@h:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://g:g@h:5672"), "/");
        assert_eq!(
            database_of("postgres://p@h:5432/orders?sslmode=disable"),
            "orders"
        );
    }

    #[test]
    fn another_database_on_the_same_server() {
        assert_eq!(
            with_database("postgres://p@h:5432/orders?sslmode=disable", "postgres"),
            "postgres://p@h:5432/postgres?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://p@h/orders", "postgres"),
            "postgres://p@h/postgres"
        );
    }

    #[test]
    fn fault_names_parse_both_ways() {
        for k in ALL_KINDS {
            assert_eq!(k.name().parse::<FaultKind>(), Ok(k));
        }
        assert!("nope".parse::<FaultKind>().is_err());
    }
}

//! `ops dlq`: what sits in a dead-letter queue, why, where it came from — and putting it
//! back where it came from, or throwing it away.
//!
//! Nothing here consumes a message it does not mean to: `list` and `show` browse (take
//! without acknowledging, then give back); `replay` acknowledges a dead letter only after
//! the broker confirmed its republished copy, so a crash in between leaves a duplicate —
//! which the consumer's inbox ignores, since the copy keeps its event id — never a loss.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use lapin::message::Delivery;
use lapin::options::QueuePurgeOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;

use contracts::topology;

use crate::OpsError;
use crate::amqp::Broker;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter: position, message id, type, why it died, where it came from.
    List {
        #[command(flatten)]
        target: Target,
        /// JSON (an array of the entries) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full, with its decoded event.
    Show {
        #[command(flatten)]
        target: Target,
        /// The message id (an event id) or the position shown by `list` (`#3`).
        #[arg(long)]
        id: String,
    },
    /// Republish dead letters to the exchange and routing key they died from.
    Replay {
        #[command(flatten)]
        target: Target,
        /// Every dead letter that has an origin.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        all: bool,
        /// Message ids (or `#N` positions) to replay; repeat the flag for several.
        #[arg(long)]
        id: Vec<String>,
        /// Say what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete every message of the dead-letter queue.
    Purge {
        #[command(flatten)]
        target: Target,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args)]
pub struct Target {
    /// The broker, with the vhost the nodes use (e.g. amqp://guest:guest@127.0.0.1:5672/%2f).
    #[arg(long, env = "AMQP_URL")]
    amqp_url: String,
    /// The dead-letter queue (`<queue>.dlq`); a consumed queue's name means its DLQ.
    #[arg(long)]
    queue: String,
    /// The most messages looked at.
    #[arg(long, default_value_t = 1000)]
    limit: u16,
}

impl Target {
    fn dlq(&self) -> String {
        if self.queue.ends_with(".dlq") {
            self.queue.clone()
        } else {
            topology::dead_letter_queue(&self.queue)
        }
    }
}

/// One dead letter as an operator sees it.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    /// `#1` is the head of the queue.
    pub position: String,
    pub message_id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// The node's reason (`x-dead-letter-reason`), else the broker's (`x-death`).
    pub reason: Option<String>,
    pub origin_exchange: Option<String>,
    pub origin_routing_key: Option<String>,
    /// How many times the broker dead-lettered it (`x-death` count).
    pub deaths: Option<i64>,
    pub bytes: usize,
    /// The event decoded through `contracts`, or why it could not be.
    pub event: Result<serde_json::Value, String>,
}

impl DeadLetter {
    pub fn of(position: usize, delivery: &Delivery) -> Self {
        let props = &delivery.properties;
        let headers = props.headers().clone().unwrap_or_default();
        let death = first_death(&headers);
        let text = |key: &str| header_text(headers.inner().get(key));
        let death_text = |key: &str| death.as_ref().and_then(|d| header_text(d.inner().get(key)));
        let origin_routing_key = text(topology::ORIGINAL_ROUTING_KEY_HEADER).or_else(|| {
            death
                .as_ref()
                .and_then(|d| match d.inner().get("routing-keys") {
                    Some(AMQPValue::FieldArray(keys)) => {
                        keys.as_slice().first().and_then(|k| header_text(Some(k)))
                    }
                    _ => None,
                })
        });
        let event = actors::amqp::consumer::decode_delivery(delivery).map(|e| event_json(&e));
        DeadLetter {
            position: format!("#{}", position + 1),
            message_id: props.message_id().as_ref().map(|m| m.to_string()),
            event_type: props.kind().as_ref().map(|k| k.to_string()),
            reason: text(topology::DEAD_LETTER_REASON_HEADER).or_else(|| death_text("reason")),
            origin_exchange: text(topology::ORIGINAL_EXCHANGE_HEADER)
                .or_else(|| death_text("exchange")),
            origin_routing_key,
            deaths: death.as_ref().and_then(|d| match d.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => Some(*n),
                Some(AMQPValue::LongInt(n)) => Some(i64::from(*n)),
                _ => None,
            }),
            bytes: delivery.data.len(),
            event,
        }
    }

    fn matches(&self, id: &str) -> bool {
        self.position == id || self.message_id.as_deref() == Some(id)
    }
}

fn event_json(event: &contracts::Event) -> serde_json::Value {
    use contracts::Event;
    let value = match event {
        Event::OrderCreated(e) => serde_json::to_value(e),
        Event::OrderCanceled(e) => serde_json::to_value(e),
        Event::InvoiceIssued(e) => serde_json::to_value(e),
        Event::InvoicePaid(e) => serde_json::to_value(e),
        Event::InvoiceVoided(e) => serde_json::to_value(e),
    };
    value.unwrap_or(serde_json::Value::Null)
}

/// The most recent `x-death` entry (the broker puts it first).
fn first_death(headers: &FieldTable) -> Option<FieldTable> {
    match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().iter().find_map(|d| match d {
            AMQPValue::FieldTable(t) => Some(t.clone()),
            _ => None,
        }),
        _ => None,
    }
}

fn header_text(value: Option<&AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

pub async fn run(command: DlqCommand) -> Result<ExitCode, OpsError> {
    match command {
        DlqCommand::List { target, json } => list(&target, json).await,
        DlqCommand::Show { target, id } => show(&target, &id).await,
        DlqCommand::Replay {
            target,
            all,
            id,
            dry_run,
        } => replay(&target, all, &id, dry_run).await,
        DlqCommand::Purge { target, yes } => purge(&target, yes).await,
    }
}

/// Every dead letter of `queue` (up to `limit`), given back untouched.
pub async fn dead_letters(
    broker: &Broker,
    queue: &str,
    limit: u16,
) -> Result<Vec<DeadLetter>, OpsError> {
    let browse = broker.browse(queue, limit).await?;
    let letters = browse
        .messages
        .iter()
        .enumerate()
        .map(|(i, d)| DeadLetter::of(i, d))
        .collect();
    browse.release(broker).await;
    Ok(letters)
}

async fn list(target: &Target, json: bool) -> Result<ExitCode, OpsError> {
    let broker = Broker::connect(&target.amqp_url).await?;
    let queue = target.dlq();
    let letters = dead_letters(&broker, &queue, target.limit).await?;
    broker.close().await;
    if json {
        let out = serde_json::to_string_pretty(&letters).unwrap_or_else(|_| "[]".into());
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{queue}: {} dead letter(s)", letters.len());
    if !letters.is_empty() {
        println!(
            "{:<5} {:<36} {:<15} {:<40} reason",
            "pos", "message id", "type", "origin"
        );
    }
    for l in &letters {
        println!(
            "{:<5} {:<36} {:<15} {:<40} {}",
            l.position,
            l.message_id.as_deref().unwrap_or("-"),
            l.event_type.as_deref().unwrap_or("-"),
            origin(l),
            l.reason.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn origin(l: &DeadLetter) -> String {
    match (&l.origin_exchange, &l.origin_routing_key) {
        (Some(e), Some(k)) => format!("{e} / {k}"),
        _ => "unknown".into(),
    }
}

async fn show(target: &Target, id: &str) -> Result<ExitCode, OpsError> {
    let broker = Broker::connect(&target.amqp_url).await?;
    let letters = dead_letters(&broker, &target.dlq(), target.limit).await?;
    broker.close().await;
    let Some(letter) = letters.iter().find(|l| l.matches(id)) else {
        eprintln!("ops: no dead letter {id} in {}", target.dlq());
        return Ok(ExitCode::from(1));
    };
    let shown = serde_json::to_string_pretty(letter).unwrap_or_default();
    println!("{shown}");
    Ok(ExitCode::SUCCESS)
}

async fn replay(
    target: &Target,
    all: bool,
    ids: &[String],
    dry_run: bool,
) -> Result<ExitCode, OpsError> {
    let broker = Broker::connect(&target.amqp_url).await?;
    let queue = target.dlq();
    let mut browse = broker.browse(&queue, target.limit).await?;
    let mut outcome: BTreeMap<&str, usize> = BTreeMap::new();
    let mut missing: Vec<&String> = ids.iter().collect();
    for i in 0..browse.messages.len() {
        let delivery = &browse.messages[i];
        let letter = DeadLetter::of(i, delivery);
        if !all && !ids.iter().any(|id| letter.matches(id)) {
            continue;
        }
        missing.retain(|id| !letter.matches(id));
        let name = letter
            .message_id
            .as_deref()
            .unwrap_or(&letter.position)
            .to_owned();
        let (Some(exchange), Some(routing_key)) =
            (&letter.origin_exchange, &letter.origin_routing_key)
        else {
            println!("skip   {name}: no origin (x-death or x-original-*) to send it back to");
            *outcome.entry("skipped").or_default() += 1;
            continue;
        };
        if dry_run {
            println!("would  {name} → {exchange} / {routing_key}");
            *outcome.entry("would replay").or_default() += 1;
            continue;
        }
        let properties = delivery
            .properties
            .clone()
            .with_headers(without_death_headers(delivery));
        if broker
            .publish(exchange, routing_key, &delivery.data, properties)
            .await?
        {
            // Only now: the copy is safe with the broker.
            browse.ack(i).await?;
            println!("replay {name} → {exchange} / {routing_key}");
            *outcome.entry("replayed").or_default() += 1;
        } else {
            println!("fail   {name}: the broker refused the copy; the dead letter stays");
            *outcome.entry("failed").or_default() += 1;
        }
    }
    browse.release(&broker).await;
    broker.close().await;
    for id in &missing {
        println!("absent {id}: not in {queue}");
    }
    let summary: Vec<String> = outcome.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "{queue}: {}",
        if summary.is_empty() {
            "nothing to replay".into()
        } else {
            summary.join(", ")
        }
    );
    let failed = outcome.contains_key("failed") || !missing.is_empty();
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The original headers without what dead-lettering added: a replayed message starts over.
fn without_death_headers(delivery: &Delivery) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(original) = delivery.properties.headers() {
        for (key, value) in original.inner() {
            let added = matches!(
                key.as_str(),
                "x-death"
                    | "x-first-death-reason"
                    | "x-first-death-queue"
                    | "x-first-death-exchange"
                    | "x-last-death-reason"
                    | "x-last-death-queue"
                    | "x-last-death-exchange"
                    | topology::DEAD_LETTER_REASON_HEADER
                    | topology::ORIGINAL_EXCHANGE_HEADER
                    | topology::ORIGINAL_ROUTING_KEY_HEADER
            );
            if !added {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    headers
}

async fn purge(target: &Target, yes: bool) -> Result<ExitCode, OpsError> {
    let queue = target.dlq();
    let broker = Broker::connect(&target.amqp_url).await?;
    let count = broker.ready_count(&queue).await?;
    if !yes {
        print!("Delete all {count} message(s) of {queue}? Type yes to confirm: ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(OpsError::io("reading the confirmation"))?;
        if answer.trim() != "yes" {
            println!("nothing deleted");
            broker.close().await;
            return Ok(ExitCode::from(1));
        }
    }
    let purged = broker
        .channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await?;
    broker.close().await;
    println!("{queue}: {purged} message(s) deleted");
    Ok(ExitCode::SUCCESS)
}

//! The outbox relay actor.
//!
//! Owns: a confirm-mode channel. Takes: `Wake` (a store committed new events) and `Tick`
//! (a periodic poll, which also covers other replicas' rows and recovery after a crash).
//! Each pass locks a batch of pending rows with `FOR UPDATE SKIP LOCKED` (replicas share the
//! outbox safely), publishes them all with publisher confirms in flight together, and marks
//! as published only those the broker acknowledged, in the same transaction. Only the
//! oldest pending row of each order is taken, so one order's events leave in the order
//! they were written. While the broker is down rows wait and passes back off.
//!
//! On failure its supervisor restarts it; nothing is lost because state lives in the table.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Confirmation};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sqlx::PgPool;

use contracts::topology;

use crate::amqp::link::{LinkError, LinkMsg, header_table, open_channel};
use crate::metrics::Metrics;
use crate::outbox::Causation;
use crate::supervision::ChildHandle;

pub enum RelayMsg {
    Wake,
    Tick,
}

/// Lets stores wake the relay after a commit without flooding its mailbox.
#[derive(Clone, Default)]
pub struct OutboxNotifier {
    relay: ChildHandle<RelayMsg>,
    pending: Arc<AtomicBool>,
}

impl OutboxNotifier {
    pub fn new(relay: ChildHandle<RelayMsg>) -> Self {
        Self {
            relay,
            pending: Arc::new(AtomicBool::new(false)),
        }
    }

    /// New events were committed. At most one wake-up is queued at a time; the periodic
    /// tick covers a relay that is restarting.
    pub fn notify(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) && !self.relay.cast(RelayMsg::Wake) {
            self.pending.store(false, Ordering::Release);
        }
    }
}

#[derive(Clone)]
pub struct RelayArgs {
    pub pool: PgPool,
    pub link: ChildHandle<LinkMsg>,
    pub notifier: OutboxNotifier,
    pub app_id: String,
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub retention: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub metrics: Metrics,
}

pub struct OutboxRelay;

pub struct RelayState {
    args: RelayArgs,
    channel: Option<Channel>,
    failures: u32,
    next_attempt: Instant,
    last_cleanup: Instant,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker refused {0} message(s)")]
    Nacked(usize),
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: i64,
    event_id: uuid::Uuid,
    exchange: String,
    routing_key: String,
    payload: Vec<u8>,
    headers: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl Actor for OutboxRelay {
    type Msg = RelayMsg;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RelayMsg>,
        args: RelayArgs,
    ) -> Result<RelayState, ActorProcessingErr> {
        myself.send_interval(args.poll_interval, || RelayMsg::Tick);
        // Drain what a previous run (or a crash) left behind.
        myself.cast(RelayMsg::Wake)?;
        let now = Instant::now();
        Ok(RelayState {
            args,
            channel: None,
            failures: 0,
            next_attempt: now,
            last_cleanup: now,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RelayMsg>,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        // A last pass so that what was committed before shutdown leaves now.
        if state.failures == 0 {
            let _ = tokio::time::timeout(Duration::from_secs(5), drain(state)).await;
        }
        if let Some(channel) = state.channel.take() {
            let _ = channel.close(200, "relay stopping".into()).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<RelayMsg>,
        msg: RelayMsg,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        if matches!(msg, RelayMsg::Wake) {
            state.args.notifier.pending.store(false, Ordering::Release);
        }
        if Instant::now() < state.next_attempt {
            return Ok(());
        }
        match drain(state).await {
            Ok(()) => {
                if state.failures > 0 {
                    tracing::info!("outbox relay recovered");
                }
                state.failures = 0;
            }
            Err(e) => {
                state.channel = None;
                state.failures += 1;
                let delay = crate::backoff::exponential(
                    state.args.backoff_min,
                    state.args.backoff_max,
                    state.failures,
                );
                state.next_attempt = Instant::now() + delay;
                if state.failures == 1 || state.failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, failures = state.failures, retry_in = ?delay, "outbox relay cannot publish; events wait in the outbox");
                }
            }
        }
        if state.last_cleanup.elapsed() > Duration::from_secs(600) {
            state.last_cleanup = Instant::now();
            let _ = delete_published(state).await;
        }
        update_backlog_metrics(state).await;
        Ok(())
    }
}

async fn drain(state: &mut RelayState) -> Result<(), RelayError> {
    loop {
        let published = publish_batch(state).await?;
        if published < state.args.batch_size as usize {
            return Ok(());
        }
    }
}

async fn confirm_channel(state: &mut RelayState) -> Result<Channel, RelayError> {
    if let Some(channel) = &state.channel
        && channel.status().connected()
    {
        return Ok(channel.clone());
    }
    let channel = open_channel(&state.args.link).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    state.channel = Some(channel.clone());
    Ok(channel)
}

/// The producer span of one publish: a child of the context saved with the outbox row (the
/// request or delivery that caused the event), and the parent of the consumer's span.
fn publish_span(row: &PendingRow, cause: &Causation) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = %format!("{} publish", row.exchange),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "publish",
        messaging.destination.name = %row.exchange,
        messaging.rabbitmq.destination.routing_key = %row.routing_key,
        messaging.message.id = %row.event_id,
        request_id = cause.request_id.as_deref().unwrap_or_default(),
    );
    crate::telemetry::set_remote_parent(
        &span,
        cause.traceparent.as_deref(),
        cause.tracestate.as_deref(),
    );
    span
}

/// AMQP properties and headers of one outbox row; the trace headers are the producer span's.
fn properties(row: &PendingRow, app_id: &str, span: &tracing::Span) -> BasicProperties {
    let mut cause = serde_json::from_value::<Causation>(row.headers.clone())
        .unwrap_or_default()
        .sanitized();
    let (traceparent, tracestate) = crate::telemetry::trace_headers(span);
    if traceparent.is_some() {
        cause.traceparent = traceparent;
        cause.tracestate = tracestate;
    }
    let mut headers = vec![(
        topology::CONTRACT_VERSION_HEADER,
        AMQPValue::LongLongInt(topology::CONTRACT_VERSION),
    )];
    for (key, value) in [
        (topology::TRACEPARENT_HEADER, cause.traceparent),
        (topology::TRACESTATE_HEADER, cause.tracestate),
        (topology::REQUEST_ID_HEADER, cause.request_id),
    ] {
        if let Some(v) = value {
            headers.push((key, AMQPValue::LongString(v.into())));
        }
    }
    BasicProperties::default()
        .with_content_type(topology::CONTENT_TYPE.into())
        .with_message_id(row.event_id.to_string().into())
        .with_type(row.routing_key.as_str().into())
        .with_timestamp(row.created_at.timestamp().max(0) as u64)
        .with_delivery_mode(2)
        .with_app_id(app_id.into())
        .with_headers(header_table(headers))
}

async fn publish_batch(state: &mut RelayState) -> Result<usize, RelayError> {
    let started = Instant::now();
    let mut tx = state.args.pool.begin().await?;
    let rows: Vec<PendingRow> = sqlx::query_as(
        "SELECT o.id, o.event_id, o.exchange, o.routing_key, o.payload, o.headers, o.created_at
           FROM outbox o
          WHERE o.published_at IS NULL
            AND NOT EXISTS (SELECT 1 FROM outbox e
                             WHERE e.aggregate_id = o.aggregate_id
                               AND e.published_at IS NULL AND e.id < o.id)
          ORDER BY o.id
          LIMIT $1
          FOR UPDATE SKIP LOCKED",
    )
    .bind(state.args.batch_size)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let (acked, refused) = match publish_rows(state, &rows).await {
        Ok(outcome) => outcome,
        Err(e) => {
            // Unlock the rows now: a dropped transaction rolls back only in the background,
            // and until then every relay (this one included) would skip them.
            let _ = tx.rollback().await;
            return Err(e);
        }
    };
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&acked)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state
        .args
        .metrics
        .outbox_batch
        .observe(started.elapsed().as_secs_f64());
    if refused > 0 {
        return Err(RelayError::Nacked(refused));
    }
    Ok(rows.len())
}

/// Publishes every row with confirms in flight together; returns the ids the broker
/// acknowledged and how many it refused.
async fn publish_rows(
    state: &mut RelayState,
    rows: &[PendingRow],
) -> Result<(Vec<i64>, usize), RelayError> {
    let channel = confirm_channel(state).await?;
    let mut confirms = Vec::with_capacity(rows.len());
    // Each producer span stays open until the broker confirmed its message.
    let mut spans = Vec::with_capacity(rows.len());
    for row in rows {
        let cause: Causation = serde_json::from_value(row.headers.clone()).unwrap_or_default();
        let span = publish_span(row, &cause);
        let props = properties(row, &state.args.app_id, &span);
        spans.push(span);
        let confirm = channel
            .basic_publish(
                row.exchange.as_str().into(),
                row.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &row.payload,
                props,
            )
            .await?;
        confirms.push(confirm);
    }
    let confirmations = join_all(confirms).await;
    drop(spans);
    let mut acked = Vec::with_capacity(rows.len());
    let mut refused = 0;
    for (row, confirmation) in rows.iter().zip(confirmations) {
        match confirmation? {
            Confirmation::Ack(_) => {
                acked.push(row.id);
                state
                    .args
                    .metrics
                    .published
                    .with_label_values(&[row.exchange.as_str(), row.routing_key.as_str()])
                    .inc();
            }
            Confirmation::Nack(_) | Confirmation::NotRequested => refused += 1,
        }
    }
    Ok((acked, refused))
}

async fn update_backlog_metrics(state: &RelayState) {
    let stats: Result<(i64, Option<f64>), _> = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8
           FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(&state.args.pool)
    .await;
    if let Ok((pending, age)) = stats {
        state.args.metrics.outbox_pending.set(pending);
        state.args.metrics.outbox_oldest_age.set(age.unwrap_or(0.0));
    }
}

async fn delete_published(state: &RelayState) -> Result<(), sqlx::Error> {
    let retention =
        chrono::Duration::from_std(state.args.retention).unwrap_or(chrono::Duration::days(7));
    sqlx::query("DELETE FROM outbox WHERE published_at < $1")
        .bind(Utc::now() - retention)
        .execute(&state.args.pool)
        .await?;
    Ok(())
}

//! The outbox relay actor.
//!
//! Owns: a confirm-mode channel and the passes in flight. Takes: `Wake` (a store committed
//! new events), `Tick` (a periodic poll, which also covers other replicas' rows and recovery
//! after a crash) and `PassDone`. Each pass locks a batch of pending rows with `FOR UPDATE
//! SKIP LOCKED` (replicas share the outbox safely), publishes them all with publisher
//! confirms in flight together, and marks as published only those the broker acknowledged,
//! in the same transaction. Up to `OUTBOX_CONCURRENCY` passes run at once, so rows committed
//! while a pass waits for its confirms leave at once in the next pass instead of waiting
//! for it. Only the oldest pending row of each order is taken — and a row locked by a pass
//! still counts as pending — so one order's events leave in the order they were written.
//! While the broker is down rows wait and passes back off.
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
use serde::Deserialize;
use sqlx::Connection;

use contracts::topology;

use crate::amqp::link::{LinkError, LinkMsg, header_table, open_channel};
use crate::db::Connections;
use crate::metrics::Metrics;
use crate::outbox::Causation;
use crate::supervision::ChildHandle;

pub enum RelayMsg {
    Wake,
    Tick,
    /// A pass has its rows (or failed before it had them).
    Selected,
    /// A pass ended: how many rows it took, or why it failed.
    PassDone(Result<usize, String>),
    /// Fault injection (`FAULT_INJECTION=on`): panic, as a bug would.
    Panic,
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
    pub connections: Connections,
    pub link: ChildHandle<LinkMsg>,
    pub notifier: OutboxNotifier,
    pub app_id: String,
    pub batch_size: i64,
    /// Passes in flight at once.
    pub concurrency: usize,
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
    passes: tokio::task::JoinSet<()>,
    /// Rows may be waiting that no pass has looked for yet.
    dirty: bool,
    /// Passes started that do not have their rows yet.
    selecting: usize,
    /// A wake-up came while passes were selecting: they may or may not see its rows.
    deferred: bool,
}

/// What one pass needs, detached from the actor so several can run at once.
#[derive(Clone)]
struct Pass {
    connections: Connections,
    channel: Channel,
    app_id: String,
    batch_size: i64,
    /// Keep published rows (stamped `published_at`) instead of deleting them at once.
    keep_published: bool,
    metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
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
            passes: tokio::task::JoinSet::new(),
            dirty: true,
            selecting: 0,
            deferred: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RelayMsg>,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        // Let the passes in flight finish, then a last pass so that what was committed
        // before shutdown leaves now.
        let passes = async { while state.passes.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), passes).await;
        state.passes.abort_all();
        if state.failures == 0 {
            let last = async {
                let pass = pass_of(state).await?;
                while publish_batch(&pass, SelectedSignal(None)).await? >= pass.batch_size as usize
                {
                }
                Ok::<_, RelayError>(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), last).await;
        }
        if let Some(channel) = state.channel.take() {
            let _ = channel.close(200, "relay stopping".into()).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RelayMsg>,
        msg: RelayMsg,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RelayMsg::Panic => panic!("injected fault: outbox relay panic"),
            RelayMsg::Wake => {
                state.args.notifier.pending.store(false, Ordering::Release);
                // A pass about to select will see these rows: starting another now would
                // mostly find nothing (a third of all passes did, three round trips each).
                // Rows committed while a pass was already selecting are looked for once it
                // has its rows.
                if state.selecting > 0 {
                    state.deferred = true;
                } else {
                    state.dirty = true;
                }
            }
            RelayMsg::Selected => {
                state.selecting = state.selecting.saturating_sub(1);
                if std::mem::take(&mut state.deferred) {
                    state.dirty = true;
                }
            }
            RelayMsg::Tick => {
                state.dirty = true;
                if !state.args.retention.is_zero()
                    && state.last_cleanup.elapsed() > Duration::from_secs(600)
                {
                    state.last_cleanup = Instant::now();
                    let _ = delete_published(state).await;
                }
                update_backlog_metrics(state).await;
            }
            RelayMsg::PassDone(Ok(rows)) => {
                if state.failures > 0 {
                    tracing::info!("outbox relay recovered");
                    update_backlog_metrics(state).await;
                }
                state.failures = 0;
                // A full batch: more may wait.
                state.dirty |= rows >= state.args.batch_size as usize;
            }
            RelayMsg::PassDone(Err(e)) => self.failed(state, &e),
        }
        // Reap finished passes (their outcome came as PassDone).
        while state.passes.try_join_next().is_some() {}
        self.start_passes(&myself, state).await;
        Ok(())
    }
}

impl OutboxRelay {
    /// Starts passes while rows may wait and fewer than `concurrency` are in flight.
    async fn start_passes(&self, myself: &ActorRef<RelayMsg>, state: &mut RelayState) {
        while state.dirty
            && state.passes.len() < state.args.concurrency.max(1)
            && Instant::now() >= state.next_attempt
        {
            state.dirty = false;
            let pass = match pass_of(state).await {
                Ok(pass) => pass,
                Err(e) => {
                    self.failed(state, &e.to_string());
                    return;
                }
            };
            let me = myself.clone();
            state.selecting += 1;
            let selected = SelectedSignal(Some(me.clone()));
            state.passes.spawn(async move {
                let outcome = publish_batch(&pass, selected)
                    .await
                    .map_err(|e| e.to_string());
                let _ = me.cast(RelayMsg::PassDone(outcome));
            });
        }
    }

    fn failed(&self, state: &mut RelayState, error: &str) {
        state.channel = None;
        state.failures += 1;
        let delay = crate::backoff::exponential(
            state.args.backoff_min,
            state.args.backoff_max,
            state.failures,
        );
        state.next_attempt = Instant::now() + delay;
        state.dirty = true;
        if state.failures == 1 || state.failures.is_multiple_of(20) {
            tracing::warn!(error, failures = state.failures, retry_in = ?delay, "outbox relay cannot publish; events wait in the outbox");
        }
    }
}

async fn pass_of(state: &mut RelayState) -> Result<Pass, RelayError> {
    Ok(Pass {
        connections: state.args.connections.clone(),
        channel: confirm_channel(state).await?,
        app_id: state.args.app_id.clone(),
        batch_size: state.args.batch_size,
        keep_published: !state.args.retention.is_zero(),
        metrics: state.args.metrics.clone(),
    })
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

/// Begins a pass's transaction and locks its rows.
async fn take_rows<'c>(
    conn: &'c mut sqlx::PgConnection,
    pass: &Pass,
) -> Result<(sqlx::Transaction<'c, sqlx::Postgres>, Vec<PendingRow>), RelayError> {
    let mut tx = conn.begin().await?;
    // A row is taken only if it is its order's oldest pending one (parked and locked rows
    // still count). Asked as a per-row subquery, that is one probe of the by-order index
    // per candidate; as `NOT EXISTS`, it became an anti join that the planner, with the
    // statistics of an almost empty outbox, ran as a full index scan per candidate.
    let rows: Vec<PendingRow> = sqlx::query_as(
        "SELECT o.id, o.event_id, o.exchange, o.routing_key, o.payload, o.headers, o.created_at
           FROM outbox o
          WHERE o.published_at IS NULL
            AND o.parked_at IS NULL
            AND o.id = (SELECT min(e.id) FROM outbox e
                         WHERE e.aggregate_id = o.aggregate_id AND e.published_at IS NULL)
          ORDER BY o.id
          LIMIT $1
          FOR UPDATE SKIP LOCKED",
    )
    .bind(pass.batch_size)
    .fetch_all(&mut *tx)
    .await?;
    Ok((tx, rows))
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
fn properties(
    row: &PendingRow,
    cause: Causation,
    app_id: &str,
    span: &tracing::Span,
) -> BasicProperties {
    let mut cause = cause.sanitized();
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

/// Tells the relay that a pass has its rows when dropped: right after the pass selected
/// them, or on any earlier exit (an error, a panic, an aborted pass), so the relay's count
/// of selecting passes never strands a wake-up.
struct SelectedSignal(Option<ActorRef<RelayMsg>>);

impl Drop for SelectedSignal {
    fn drop(&mut self) {
        if let Some(relay) = self.0.take() {
            let _ = relay.cast(RelayMsg::Selected);
        }
    }
}

/// Publishes a batch of pending rows; `selected` is dropped as soon as the pass has them.
async fn publish_batch(pass: &Pass, selected: SelectedSignal) -> Result<usize, RelayError> {
    pass.connections
        .run(async |conn| publish_batch_on(conn, pass, selected).await)
        .await
}

async fn publish_batch_on(
    conn: &mut sqlx::PgConnection,
    pass: &Pass,
    selected: SelectedSignal,
) -> Result<usize, RelayError> {
    let started = Instant::now();
    let taken = take_rows(conn, pass).await;
    drop(selected);
    let (mut tx, rows) = taken?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let (acked, refused) = match publish_rows(pass, &rows).await {
        Ok(outcome) => outcome,
        Err(e) => {
            // Unlock the rows now: a dropped transaction rolls back only in the background,
            // and until then every relay (this one included) would skip them.
            let _ = tx.rollback().await;
            return Err(e);
        }
    };
    // Deleting adds no index entries; stamping `published_at` adds a row version and three.
    let settle = if pass.keep_published {
        "UPDATE outbox SET published_at = now() WHERE id = ANY($1)"
    } else {
        "DELETE FROM outbox WHERE id = ANY($1)"
    };
    sqlx::query(settle).bind(&acked).execute(&mut *tx).await?;
    if !refused.is_empty() {
        // Set aside, not retried forever: a refused row must not hold back the rest.
        let ids: Vec<i64> = refused.iter().map(|r| r.id).collect();
        sqlx::query(
            "UPDATE outbox SET parked_at = now(), parked_reason = 'refused by the broker (nack)'
              WHERE id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    pass.metrics
        .outbox_batch
        .observe(started.elapsed().as_secs_f64());
    for row in &refused {
        tracing::warn!(
            event_id = %row.event_id,
            routing_key = row.routing_key,
            "the broker refused an event; it is parked in the outbox (parked_at) and the rest goes on"
        );
        pass.metrics.outbox_parked.inc();
    }
    Ok(rows.len())
}

/// Publishes every row with confirms in flight together; returns the ids the broker
/// acknowledged and the rows it refused.
async fn publish_rows<'a>(
    pass: &Pass,
    rows: &'a [PendingRow],
) -> Result<(Vec<i64>, Vec<&'a PendingRow>), RelayError> {
    let channel = &pass.channel;
    let mut publishes = Vec::with_capacity(rows.len());
    // Each producer span stays open until the broker confirmed its message.
    let mut spans = Vec::with_capacity(rows.len());
    for row in rows {
        // Read once from the row (without copying its JSON): the span and the headers use it.
        let cause = Causation::deserialize(&row.headers).unwrap_or_default();
        let span = publish_span(row, &cause);
        let props = properties(row, cause, &pass.app_id, &span);
        spans.push(span);
        publishes.push(channel.basic_publish(
            row.exchange.as_str().into(),
            row.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &row.payload,
            props,
        ));
    }
    // A publish resolves once the connection's I/O thread has written it: awaited one by
    // one, that is a round trip between threads per message. Polled together, every
    // message is queued (in this order) before the thread wakes once to write them all.
    let confirms = join_all(publishes)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let confirmations = join_all(confirms).await;
    drop(spans);
    let mut acked = Vec::with_capacity(rows.len());
    let mut refused = Vec::new();
    for (row, confirmation) in rows.iter().zip(confirmations) {
        match confirmation? {
            Confirmation::Ack(_) => {
                acked.push(row.id);
                pass.metrics
                    .published
                    .with_label_values(&[row.exchange.as_str(), row.routing_key.as_str()])
                    .inc();
            }
            Confirmation::Nack(_) | Confirmation::NotRequested => refused.push(row),
        }
    }
    Ok((acked, refused))
}

async fn update_backlog_metrics(state: &RelayState) {
    let stats: Result<(i64, Option<f64>), _> = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8
           FROM outbox WHERE published_at IS NULL AND parked_at IS NULL",
    )
    .fetch_one(state.args.connections.pool())
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
        .execute(state.args.connections.pool())
        .await?;
    Ok(())
}

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
//! Takes also `Publish`: events a store has just committed under a lease
//! ([`crate::outbox::OutboxRows::leased`]), published at once without a pass selecting
//! them (or, while [`DIRECT_DEPTH`] such publishes wait for confirms, gathered until one
//! is done: `Flush`), then deleted (or stamped) by a [`Settler`] that gathers the
//! confirmed ids of all such publishes finishing meanwhile into one statement. That takes the wake-up, the
//! `BEGIN`, the `SELECT` and the pass's own commit off an order's way to the broker. If
//! that publish fails, the rows stay leased for [`crate::outbox::DIRECT_LEASE`] and a pass
//! takes them after it, as it does after a crash.
//!
//! On failure its supervisor restarts it; nothing is lost because state lives in the table.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
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
use crate::outbox::{Causation, Outgoing};
use crate::supervision::ChildHandle;

pub enum RelayMsg {
    Wake,
    Tick,
    /// A pass has its rows (or failed before it had them).
    Selected,
    /// A pass ended: how many rows it took, or why it failed.
    PassDone(Result<usize, String>),
    /// Leased events a store has just committed: publish them now.
    Publish(Vec<Outgoing>),
    /// A direct publish got its confirms while leased events waited for it.
    Flush,
    /// A direct publish failed: its leased events were not published, and the broker
    /// link is in doubt, as after a failed pass.
    DirectFailed {
        unpublished: Vec<uuid::Uuid>,
        error: String,
    },
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

    /// Leased events were committed (see [`crate::outbox::OutboxRows::leased`]): the relay
    /// publishes them without selecting them. Should the relay be restarting, they leave
    /// in a pass once their lease ends.
    pub fn publish(&self, events: Vec<Outgoing>) {
        if !events.is_empty() {
            self.relay.cast(RelayMsg::Publish(events));
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
    /// Publishes of leased events in flight (until settled).
    direct: tokio::task::JoinSet<()>,
    /// Leased events waiting for a direct publish to be free.
    outgoing: Vec<Outgoing>,
    flow: Arc<DirectFlow>,
    settler: Arc<Settler>,
    /// Leased events handed over but not published (see [`MAX_STRANDED`]).
    stranded: Vec<uuid::Uuid>,
}

/// Direct publishes waiting for their confirms, shared with their tasks. While
/// [`DIRECT_DEPTH`] are, new leased events gather in the relay and leave together when one
/// is done: one publish per event at low rates, fewer and bigger ones (fewer writes to the
/// broker, fewer confirms) under load, as with group commit.
#[derive(Default)]
struct DirectFlow {
    publishing: AtomicUsize,
    /// Events gather: the publish that finishes next asks the relay for a `Flush`.
    gathering: AtomicBool,
}

/// How long confirmed direct publishes gather before one statement settles them all.
/// Bounds what a crash can publish twice (consumers drop duplicates) and how long a later
/// event of the same order waits behind a published one.
const SETTLE_WINDOW: Duration = Duration::from_millis(50);

/// One direct publish waiting for its confirms, counted in [`DirectFlow`] until dropped
/// (its confirms came, or it failed, panicked or was aborted), when it asks the relay to
/// publish what gathered meanwhile.
struct Publishing(Arc<DirectFlow>, ActorRef<RelayMsg>);

impl Publishing {
    fn start(flow: Arc<DirectFlow>, relay: ActorRef<RelayMsg>) -> Self {
        flow.publishing.fetch_add(1, Ordering::SeqCst);
        Publishing(flow, relay)
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        self.0.publishing.fetch_sub(1, Ordering::SeqCst);
        if self.0.gathering.swap(false, Ordering::SeqCst) {
            let _ = self.1.cast(RelayMsg::Flush);
        }
    }
}

/// Direct publishes waiting for confirms at once.
const DIRECT_DEPTH: usize = 2;

/// Leased events gathered at most; past it, new ones are stranded (a broker that slow is
/// better served by a pass's big batches anyway).
const MAX_GATHERED: usize = 4096;

/// Stranded events remembered at most: events handed over that the relay could not gather
/// (past [`MAX_GATHERED`], or while it cannot publish) or whose direct publish failed.
/// Their rows would wait for their lease to end, 5 s after their commit, even if the broker
/// was back after a moment (RabbitMQ pauses for a second or more each time its quorum-queue
/// log rolls over). The relay remembers their ids (16 bytes each) and, once it can publish
/// again, ends their leases in one statement and runs a pass. Past this many, the rest wait
/// for their leases.
const MAX_STRANDED: usize = 65_536;

/// What one pass needs, detached from the actor so several can run at once.
#[derive(Clone)]
struct Pass {
    connections: Connections,
    channel: Channel,
    app_id: String,
    batch_size: i64,
    /// Keep published rows (stamped `published_at`) instead of deleting them at once.
    keep_published: bool,
    /// Take leased rows too (the last pass before stopping).
    past_leases: bool,
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
        let settler = Arc::new(Settler {
            connections: args.connections.clone(),
            keep_published: !args.retention.is_zero(),
            notifier: args.notifier.clone(),
            confirmed: Mutex::default(),
            busy: AtomicBool::new(false),
            woken: AtomicBool::new(false),
        });
        Ok(RelayState {
            args,
            direct: tokio::task::JoinSet::new(),
            outgoing: Vec::new(),
            flow: Arc::default(),
            settler,
            stranded: Vec::new(),
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
        // before shutdown leaves now — leased rows included: a store's `Publish` still in
        // the mailbox is dropped with it. (Another replica's row in flight may go twice;
        // consumers drop the duplicate.)
        let passes = async {
            while state.direct.join_next().await.is_some() {}
            while state.passes.join_next().await.is_some() {}
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), passes).await;
        state.passes.abort_all();
        state.direct.abort_all();
        if state.failures == 0 {
            let last = async {
                let pass = Pass {
                    past_leases: true,
                    ..pass_of(state).await?
                };
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
                // Its rows may wait behind leased events of the same order, which no pass
                // takes: look again once those are settled.
                if !state.direct.is_empty() {
                    state.settler.woken.store(true, Ordering::Release);
                }
            }
            RelayMsg::Publish(events) => {
                if state.failures == 0 && state.outgoing.len() < MAX_GATHERED {
                    state.outgoing.extend(events);
                    self.publish_gathered(&myself, state).await;
                } else {
                    strand(state, events.iter().map(|e| e.event_id));
                }
            }
            RelayMsg::Flush => self.publish_gathered(&myself, state).await,
            RelayMsg::DirectFailed { unpublished, error } => {
                strand(state, unpublished.into_iter());
                self.failed(state, &error);
            }
            RelayMsg::Selected => {
                state.selecting = state.selecting.saturating_sub(1);
                if std::mem::take(&mut state.deferred) {
                    state.dirty = true;
                }
            }
            RelayMsg::Tick => {
                state.dirty = true;
                release_stranded(&myself, state);
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
                release_stranded(&myself, state);
                // A full batch: more may wait.
                state.dirty |= rows >= state.args.batch_size as usize;
            }
            RelayMsg::PassDone(Err(e)) => self.failed(state, &e),
        }
        // Reap finished passes (their outcome came as PassDone).
        while state.passes.try_join_next().is_some() {}
        while state.direct.try_join_next().is_some() {}
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

    /// Publishes the gathered leased events, up to `OUTBOX_BATCH_SIZE` per publish, each in
    /// a task of its own, while fewer than [`DIRECT_DEPTH`] publishes wait for confirms;
    /// the rest keep gathering.
    async fn publish_gathered(&self, myself: &ActorRef<RelayMsg>, state: &mut RelayState) {
        while !state.outgoing.is_empty() && state.failures == 0 {
            // Said before looking, so that a publish finishing meanwhile asks for a flush
            // (one that finds nothing gathered does nothing).
            state.flow.gathering.store(true, Ordering::SeqCst);
            if state.flow.publishing.load(Ordering::SeqCst) >= DIRECT_DEPTH {
                return;
            }
            state.flow.gathering.store(false, Ordering::SeqCst);
            let n = state
                .outgoing
                .len()
                .min(state.args.batch_size.max(1) as usize);
            let events: Vec<Outgoing> = state.outgoing.drain(..n).collect();
            self.publish_direct(myself, state, events).await;
        }
    }

    /// Publishes leased events in a task of their own, then settles them.
    async fn publish_direct(
        &self,
        myself: &ActorRef<RelayMsg>,
        state: &mut RelayState,
        events: Vec<Outgoing>,
    ) {
        let channel = match confirm_channel(state).await {
            Ok(channel) => channel,
            Err(e) => {
                strand(state, events.iter().map(|e| e.event_id));
                self.failed(state, &e.to_string());
                return;
            }
        };
        let (me, settler, metrics, flow) = (
            myself.clone(),
            state.settler.clone(),
            state.args.metrics.clone(),
            state.flow.clone(),
        );
        let app_id = state.args.app_id.clone();
        let publishing = Publishing::start(flow, me.clone());
        state.direct.spawn(async move {
            let started = Instant::now();
            let rows: Vec<&Outgoing> = events.iter().collect();
            let published = publish_rows(&channel, &app_id, &metrics, &rows).await;
            drop(publishing);
            match published {
                Ok(acks) => {
                    let (acked, refused): (Vec<_>, Vec<_>) =
                        events.iter().zip(acks).partition(|(_, ack)| *ack);
                    settler
                        .settle(acked.into_iter().map(|(e, _)| e.event_id).collect())
                        .await;
                    let refused: Vec<&Outgoing> = refused.into_iter().map(|(e, _)| e).collect();
                    if !refused.is_empty() {
                        let ids: Vec<uuid::Uuid> = refused.iter().map(|e| e.event_id).collect();
                        let parked = settler
                            .connections
                            .run(async |conn| park(conn, &ids).await)
                            .await;
                        if parked.is_ok() {
                            report_parked(&metrics, &refused);
                        }
                    }
                    metrics
                        .outbox_batch
                        .observe(started.elapsed().as_secs_f64());
                }
                Err(e) => {
                    let _ = me.cast(RelayMsg::DirectFailed {
                        unpublished: events.iter().map(|e| e.event_id).collect(),
                        error: e.to_string(),
                    });
                }
            }
        });
    }

    fn failed(&self, state: &mut RelayState, error: &str) {
        state.channel = None;
        // Gathered events leave in a pass once the relay can publish again.
        let gathered = std::mem::take(&mut state.outgoing);
        strand(state, gathered.iter().map(|e| e.event_id));
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

/// Remembers leased events the relay was handed but did not publish, up to [`MAX_STRANDED`].
fn strand(state: &mut RelayState, ids: impl Iterator<Item = uuid::Uuid>) {
    let room = MAX_STRANDED.saturating_sub(state.stranded.len());
    state.stranded.extend(ids.take(room));
}

/// While the relay can publish, ends the leases of the stranded events (in a task, so the
/// relay's mailbox does not wait on the database) and then wakes the relay for a pass.
/// Should that fail, their leases end by themselves.
fn release_stranded(myself: &ActorRef<RelayMsg>, state: &mut RelayState) {
    if state.failures > 0 || state.stranded.is_empty() {
        return;
    }
    let ids = std::mem::take(&mut state.stranded);
    let (connections, me) = (state.args.connections.clone(), myself.clone());
    tokio::spawn(async move {
        match connections
            .run(async |conn| end_leases(conn, &ids).await)
            .await
        {
            Ok(()) => {
                let _ = me.cast(RelayMsg::Wake);
            }
            Err(e) => tracing::debug!(error = %e, "stranded events wait for their leases"),
        }
    });
}

/// Ends the leases of these rows if still pending. A row a pass holds (its lease ended
/// meanwhile) is skipped rather than waited for: it is being published anyway.
async fn end_leases(conn: &mut sqlx::PgConnection, ids: &[uuid::Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox SET lease_until = NULL
          WHERE event_id IN (SELECT event_id FROM outbox
                              WHERE event_id = ANY($1) AND lease_until IS NOT NULL
                                AND published_at IS NULL
                                FOR UPDATE SKIP LOCKED)",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

async fn pass_of(state: &mut RelayState) -> Result<Pass, RelayError> {
    Ok(Pass {
        connections: state.args.connections.clone(),
        channel: confirm_channel(state).await?,
        app_id: state.args.app_id.clone(),
        batch_size: state.args.batch_size,
        keep_published: !state.args.retention.is_zero(),
        past_leases: false,
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
) -> Result<(sqlx::Transaction<'c, sqlx::Postgres>, Vec<Outgoing>), RelayError> {
    let mut tx = conn.begin().await?;
    // A row is taken only if it is its order's oldest pending one (parked, leased and
    // locked rows still count), and not while its writer's lease on it lasts. Asked as a
    // per-row subquery, that is one probe of the by-order index per candidate; as
    // `NOT EXISTS`, it became an anti join that the planner, with the statistics of an
    // almost empty outbox, ran as a full index scan per candidate.
    let rows: Vec<Outgoing> = sqlx::query_as(
        "SELECT o.event_id, o.exchange, o.routing_key, o.payload, o.headers, o.created_at
           FROM outbox o
          WHERE o.published_at IS NULL
            AND o.parked_at IS NULL
            AND (o.lease_until IS NULL OR o.lease_until < now() OR $2)
            AND o.id = (SELECT min(e.id) FROM outbox e
                         WHERE e.aggregate_id = o.aggregate_id AND e.published_at IS NULL)
          ORDER BY o.id
          LIMIT $1
          FOR UPDATE SKIP LOCKED",
    )
    .bind(pass.batch_size)
    .bind(pass.past_leases)
    .fetch_all(&mut *tx)
    .await?;
    Ok((tx, rows))
}

/// The producer span of one publish: a child of the context saved with the outbox row (the
/// request or delivery that caused the event), and the parent of the consumer's span.
fn publish_span(row: &Outgoing, cause: &Causation) -> tracing::Span {
    let span = tracing::info_span!(
        target: crate::telemetry::TRACE_ONLY,
        "publish",
        otel.name = %format_args!("{} publish", row.exchange),
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
    row: &Outgoing,
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
    let events: Vec<&Outgoing> = rows.iter().collect();
    let (acked, refused): (Vec<_>, Vec<_>) =
        match publish_rows(&pass.channel, &pass.app_id, &pass.metrics, &events).await {
            Ok(acks) => rows.iter().zip(acks).partition(|(_, ack)| *ack),
            Err(e) => {
                // Unlock the rows now: a dropped transaction rolls back only in the background,
                // and until then every relay (this one included) would skip them.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
    let acked: Vec<uuid::Uuid> = acked.into_iter().map(|(r, _)| r.event_id).collect();
    settle(&mut tx, pass.keep_published, &acked).await?;
    if !refused.is_empty() {
        let ids: Vec<uuid::Uuid> = refused.iter().map(|(r, _)| r.event_id).collect();
        park(&mut tx, &ids).await?;
    }
    let refused: Vec<&Outgoing> = refused.into_iter().map(|(r, _)| r).collect();
    tx.commit().await?;
    pass.metrics
        .outbox_batch
        .observe(started.elapsed().as_secs_f64());
    report_parked(&pass.metrics, &refused);
    Ok(rows.len())
}

/// Marks the rows of published events as published: deleted, or stamped when published
/// rows are kept. Deleting adds no index entries; stamping adds a row version and three.
async fn settle(
    conn: &mut sqlx::PgConnection,
    keep_published: bool,
    event_ids: &[uuid::Uuid],
) -> Result<(), sqlx::Error> {
    let statement = if keep_published {
        "UPDATE outbox SET published_at = now(), lease_until = NULL WHERE event_id = ANY($1)"
    } else {
        "DELETE FROM outbox WHERE event_id = ANY($1)"
    };
    sqlx::query(statement).bind(event_ids).execute(conn).await?;
    Ok(())
}

/// Sets aside the rows of events the broker refused: not retried forever, so that a
/// refused row does not hold back the rest.
async fn park(conn: &mut sqlx::PgConnection, event_ids: &[uuid::Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox SET parked_at = now(), parked_reason = 'refused by the broker (nack)',
                lease_until = NULL
          WHERE event_id = ANY($1)",
    )
    .bind(event_ids)
    .execute(conn)
    .await?;
    Ok(())
}

fn report_parked(metrics: &Metrics, refused: &[&Outgoing]) {
    for event in refused {
        tracing::warn!(
            event_id = %event.event_id,
            routing_key = event.routing_key,
            "the broker refused an event; it is parked in the outbox (parked_at) and the rest goes on"
        );
        metrics.outbox_parked.inc();
    }
}

/// Settles the leased rows of direct publishes once the broker confirmed them. Whoever
/// finds it idle waits [`SETTLE_WINDOW`], then settles everything confirmed by then in one
/// statement, and again until nothing waits; publishes that finish meanwhile only add
/// their ids. A settle is not on any event's way to the broker, so waiting costs nothing
/// but a slightly later delete, and saves a round trip and a commit per event at low
/// rates (where each confirm would otherwise be settled alone).
struct Settler {
    connections: Connections,
    keep_published: bool,
    notifier: OutboxNotifier,
    confirmed: Mutex<Vec<uuid::Uuid>>,
    busy: AtomicBool,
    /// Other events were committed while leased ones were in flight: they may be waiting
    /// behind them, so the relay looks again once these are settled.
    woken: AtomicBool,
}

impl Settler {
    fn confirmed(&self) -> std::sync::MutexGuard<'_, Vec<uuid::Uuid>> {
        // A panic while holding this lock leaves the list valid (an extend or a take).
        self.confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn settle(&self, event_ids: Vec<uuid::Uuid>) {
        self.confirmed().extend(event_ids);
        while !self.busy.swap(true, Ordering::AcqRel) {
            tokio::time::sleep(SETTLE_WINDOW).await;
            let ids = std::mem::take(&mut *self.confirmed());
            if !ids.is_empty() {
                let settled = self
                    .connections
                    .run(async |conn| settle(conn, self.keep_published, &ids).await)
                    .await;
                if let Err(e) = settled {
                    // Published but still in the outbox: a pass publishes them again once
                    // their lease ends, and consumers drop the duplicate.
                    tracing::warn!(error = %e, events = ids.len(), "could not settle published events");
                }
            }
            self.busy.store(false, Ordering::Release);
            if self.confirmed().is_empty() {
                break;
            }
        }
        if self.woken.swap(false, Ordering::AcqRel) {
            self.notifier.notify();
        }
    }
}

/// Publishes every event with confirms in flight together; returns, per event, whether
/// the broker acknowledged it (else it refused it).
async fn publish_rows(
    channel: &Channel,
    app_id: &str,
    metrics: &Metrics,
    rows: &[&Outgoing],
) -> Result<Vec<bool>, RelayError> {
    let mut publishes = Vec::with_capacity(rows.len());
    // Each producer span stays open until the broker confirmed its message.
    let mut spans = Vec::with_capacity(rows.len());
    for row in rows {
        // Read once from the row (without copying its JSON): the span and the headers use it.
        let cause = Causation::deserialize(&row.headers).unwrap_or_default();
        let span = publish_span(row, &cause);
        let props = properties(row, cause, app_id, &span);
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
    let mut acks = Vec::with_capacity(rows.len());
    for (row, confirmation) in rows.iter().zip(confirmations) {
        let acked = matches!(confirmation?, Confirmation::Ack(_));
        if acked {
            metrics
                .published
                .with_label_values(&[row.exchange.as_str(), row.routing_key.as_str()])
                .inc();
        }
        acks.push(acked);
    }
    Ok(acks)
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

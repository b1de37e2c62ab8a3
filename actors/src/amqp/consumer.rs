//! The consumer bridge actor: deliveries → decoded contract events → the node's handler
//! (which sends the batch to a store worker) → ack after commit.
//!
//! Owns: one channel and one `basic.consume` on its queue, and the deliveries in flight.
//! Takes: `Subscribe` (sent to itself on start and after the stream ends) and
//! `StreamEnded`.
//!
//! Deliveries wait in one queue (`dispatch`) that `lanes` take from: an idle lane takes
//! everything waiting (up to `batch_size`) except the events of orders another lane holds,
//! so one order's events are handled in the order they were delivered (a cancel delivered
//! before its create is handled first) while different orders are handled concurrently,
//! and no delivery waits while a lane is free. The node applies a lane's batch in one
//! transaction; every delivery is acknowledged only after that commit,
//! through the channel's acknowledgement window (`acks`), which covers many deliveries of
//! many lanes with one frame.
//!
//! - undecodable, invalid or oversized body → rejected without requeue → `<queue>.dlq`;
//! - the node reports one event of a batch invalid → that one is dead-lettered;
//! - the batch fails because the database is unavailable → retried in place with capped
//!   backoff, without limit (never requeued in a hot loop);
//! - the batch fails otherwise → each of its events is retried alone, so a failing one
//!   cannot fail or duplicate its batchmates; alone it gets `max_attempts`, then the DLQ.
//!
//! When the connection dies the stream ends and the actor re-subscribes with backoff; the
//! broker redelivers what was unacknowledged and the inbox makes that harmless. If a lane
//! panics, the actor fails and its supervisor restarts it (the channel closes, so the broker
//! redelivers what that lane held).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tokio::task::JoinSet;

use contracts::Event;
use contracts::topology::{self, ConsumedQueue};

use super::acks::Acks;
use super::dispatch::Dispatch;
use super::link::{LinkMsg, open_channel};
use crate::metrics::Metrics;
use crate::outbox::Causation;
use crate::supervision::ChildHandle;

/// Transport facts about a delivery that handlers may use.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// What events caused by this one carry on (trace context, request id).
    pub cause: Causation,
    pub redelivered: bool,
    /// The delivery's consumer span: the node's database spans for this event go below it.
    pub span: tracing::Span,
}

/// One decoded delivery, as the node sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub event: Event,
    pub delivered: Delivered,
}

/// What the node did with one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Seen before (inbox hit): acknowledged, nothing changed.
    Duplicate,
    /// Can never be applied (e.g. breaks a domain rule): dead-lettered. The node must have
    /// committed nothing for it.
    Invalid(String),
}

/// Why a whole batch was not applied (nothing of it committed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandleError {
    /// A dependency is down (database): retry with backoff, indefinitely.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else: retry each event alone, a bounded number of times, then dead-letter.
    #[error("failed: {0}")]
    Failed(String),
}

/// The outcomes of a batch, one per event and in the same order.
pub type HandleFuture = Pin<Box<dyn Future<Output = Result<Vec<Outcome>, HandleError>> + Send>>;

/// The node's side of the bridge.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `batch` in one transaction. The events of one order keep their delivery
    /// order within the batch.
    fn handle(&self, batch: Vec<Incoming>) -> HandleFuture;
}

#[derive(Clone)]
pub struct ConsumerArgs {
    pub input: ConsumedQueue,
    pub consumer_tag: String,
    pub link: ChildHandle<LinkMsg>,
    pub handler: Arc<dyn EventHandler>,
    pub prefetch: u16,
    /// How many lanes handle deliveries concurrently (one order always in the same lane).
    pub lanes: usize,
    /// The most events one lane hands the node at once.
    pub batch_size: usize,
    pub max_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub shutdown_grace: Duration,
    pub metrics: Metrics,
}

pub enum ConsumerMsg {
    Subscribe,
    StreamEnded {
        generation: u64,
        reason: String,
        /// A lane panicked: the actor fails so that its supervisor restarts it.
        fatal: bool,
    },
    /// Fault injection (`FAULT_INJECTION=on`): panic, as a bug would.
    Panic,
}

pub struct Consumer;

pub struct ConsumerState {
    args: Arc<ConsumerArgs>,
    generation: u64,
    failures: u32,
    stop: watch::Sender<bool>,
    stream_task: Option<tokio::task::JoinHandle<()>>,
}

/// Outcomes counted by `messages_consumed_total`.
const OUTCOMES: [&str; 4] = ["processed", "duplicate", "retried", "dead_lettered"];

impl Actor for Consumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerMsg>,
        args: ConsumerArgs,
    ) -> Result<ConsumerState, ActorProcessingErr> {
        // Every series whose labels are known now exists from the start, at 0.
        for event_type in args.input.routing_keys {
            for outcome in OUTCOMES {
                let _ = args.metrics.consumed.with_label_values(&[
                    args.input.queue,
                    event_type,
                    outcome,
                ]);
            }
        }
        myself.cast(ConsumerMsg::Subscribe)?;
        let (stop, _) = watch::channel(false);
        Ok(ConsumerState {
            args: Arc::new(args),
            generation: 0,
            failures: 0,
            stop,
            stream_task: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConsumerMsg>,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop taking deliveries, let those in flight finish within the grace period.
        state.stop.send_replace(true);
        if let Some(task) = state.stream_task.take() {
            let _ = tokio::time::timeout(state.args.shutdown_grace, task).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ConsumerMsg>,
        msg: ConsumerMsg,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        let queue = state.args.input.queue;
        match msg {
            ConsumerMsg::Panic => panic!("injected fault: consumer of {queue} panic"),
            ConsumerMsg::Subscribe => match subscribe(&state.args).await {
                Ok(stream) => {
                    state.generation += 1;
                    state.failures = 0;
                    let generation = state.generation;
                    tracing::info!(queue, "consuming");
                    let args = state.args.clone();
                    let stop = state.stop.subscribe();
                    let me = myself.clone();
                    state.stream_task = Some(tokio::spawn(async move {
                        let (reason, fatal) = run_stream(args, stream, stop).await;
                        let _ = me.cast(ConsumerMsg::StreamEnded {
                            generation,
                            reason,
                            fatal,
                        });
                    }));
                }
                Err(e) => {
                    state.failures += 1;
                    let delay = crate::backoff::exponential(
                        state.args.backoff_min,
                        state.args.backoff_max,
                        state.failures,
                    );
                    if state.failures == 1 {
                        tracing::warn!(queue, error = %e, "cannot consume yet; retrying with backoff");
                    }
                    myself.send_after(delay, || ConsumerMsg::Subscribe);
                }
            },
            ConsumerMsg::StreamEnded {
                generation,
                reason,
                fatal,
            } => {
                if fatal {
                    return Err(format!("consumer of {queue} failed: {reason}").into());
                }
                if generation == state.generation && !*state.stop.borrow() {
                    tracing::warn!(queue, reason, "consumer stream ended; re-subscribing");
                    state.failures = 1;
                    myself.send_after(state.args.backoff_min, || ConsumerMsg::Subscribe);
                }
            }
        }
        Ok(())
    }
}

async fn subscribe(
    args: &ConsumerArgs,
) -> Result<(lapin::Channel, lapin::Consumer), super::LinkError> {
    let channel = open_channel(&args.link).await?;
    channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    // Dead letters are republished (with their reason) on this channel, with confirms.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            args.input.queue.into(),
            args.consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// A decoded delivery on its way through a lane.
struct Item {
    event: Event,
    delivered: Delivered,
    delivery: Delivery,
    /// The channel it came on, for republishing it as a dead letter.
    channel: lapin::Channel,
    /// The channel's acknowledgement window.
    acks: Acks,
    received: Instant,
}

/// Reads deliveries until the stream ends or `stop` is raised; returns why it ended and
/// whether that was a failure of this actor (a lane panicked).
async fn run_stream(
    args: Arc<ConsumerArgs>,
    (channel, mut consumer): (lapin::Channel, lapin::Consumer),
    mut stop: watch::Receiver<bool>,
) -> (String, bool) {
    let (acks, acks_task) = Acks::start(args.input.queue, args.prefetch);
    let mut lanes = JoinSet::new();
    let dispatch = Dispatch::new();
    for _ in 0..args.lanes.max(1) {
        lanes.spawn(run_lane(args.clone(), dispatch.clone(), stop.clone()));
    }
    let (reason, fatal) = loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = channel.basic_cancel(args.consumer_tag.as_str().into(), BasicCancelOptions::default()).await;
                break ("stopping".to_owned(), false);
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    acks.hold(delivery.delivery_tag);
                    if let Some(item) = admit(&args, &channel, &acks, delivery).await {
                        dispatch.push(item.event.order_id(), item);
                    }
                }
                Some(Err(e)) => break (e.to_string(), false),
                None => break ("consumer canceled".to_owned(), false),
            },
            Some(joined) = lanes.join_next() => {
                let why = match joined {
                    Err(e) if e.is_panic() => "a lane panicked".to_owned(),
                    _ => "a lane ended".to_owned(),
                };
                break (why, true);
            }
        }
    };
    // Lanes finish what they hold (within the grace period), then the channel closes and
    // the broker requeues whatever is still unacknowledged.
    dispatch.close();
    let drain = async { while lanes.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(args.shutdown_grace, drain).await;
    lanes.abort_all();
    // What the lanes committed is acknowledged before the channel closes.
    drop(acks);
    let _ = tokio::time::timeout(args.shutdown_grace, acks_task).await;
    let _ = channel.close(200, "consumer done".into()).await;
    (reason, fatal)
}

fn header_str(headers: &Option<FieldTable>, key: &str) -> Option<String> {
    let value = headers.as_ref()?.inner().get(key)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Decodes a delivery into an event, checking the envelope against the body.
pub fn decode_delivery(delivery: &Delivery) -> Result<Event, String> {
    let props = &delivery.properties;
    let event_type = props
        .kind()
        .as_ref()
        .map(|k| k.as_str().to_owned())
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
    let event = contracts::decode(&event_type, &delivery.data).map_err(|e| e.to_string())?;
    if let Some(message_id) = props.message_id()
        && message_id.as_str() != event.event_id().to_string()
    {
        return Err(format!(
            "message_id {} does not match event_id {}",
            message_id.as_str(),
            event.event_id()
        ));
    }
    if let Some(version) = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(topology::CONTRACT_VERSION_HEADER).cloned())
    {
        let v = match version {
            AMQPValue::LongLongInt(v) => v,
            AMQPValue::LongInt(v) => i64::from(v),
            AMQPValue::ShortInt(v) => i64::from(v),
            AMQPValue::ShortShortInt(v) => i64::from(v),
            AMQPValue::LongUInt(v) => i64::from(v),
            _ => -1,
        };
        if v != topology::CONTRACT_VERSION {
            return Err(format!("unsupported contract-version {v}"));
        }
    }
    Ok(event)
}

/// Decodes a delivery inside a consumer span that continues the producer's trace; a poison
/// message is dead-lettered here and goes no further.
async fn admit(
    args: &ConsumerArgs,
    channel: &lapin::Channel,
    acks: &Acks,
    delivery: Delivery,
) -> Option<Item> {
    let received = Instant::now();
    let headers = delivery.properties.headers();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "consume",
        otel.name = %format_args!("{} process", args.input.queue),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %delivery.exchange,
        messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
        messaging.message.id = %message_id,
        messaging.consumer.group.name = args.input.queue,
    );
    // Whatever a publisher put in these headers, only well-formed, bounded values go on.
    let from_headers = Causation {
        traceparent: header_str(headers, topology::TRACEPARENT_HEADER),
        tracestate: header_str(headers, topology::TRACESTATE_HEADER),
        request_id: header_str(headers, topology::REQUEST_ID_HEADER),
    }
    .sanitized();
    crate::telemetry::set_remote_parent(
        &span,
        from_headers.traceparent.as_deref(),
        from_headers.tracestate.as_deref(),
    );
    let event = match decode_delivery(&delivery) {
        Ok(event) => event,
        Err(reason) => {
            span.in_scope(|| {
                tracing::warn!(
                    queue = args.input.queue,
                    reason,
                    "dead-lettering a message that cannot be decoded"
                )
            });
            dead_letter(args, channel, acks, &delivery, "undecodable", &reason).await;
            return None;
        }
    };
    // Events this delivery causes continue from the consumer span, and keep the request id.
    let cause = span
        .in_scope(|| Causation::current(from_headers.request_id.clone(), &from_headers))
        .sanitized();
    Some(Item {
        event,
        delivered: Delivered {
            cause,
            redelivered: delivery.redelivered,
            span,
        },
        delivery,
        channel: channel.clone(),
        acks: acks.clone(),
        received,
    })
}

/// One lane: takes what waits (and no other lane's orders) as a batch, applies it, settles
/// each delivery. The orders it took stay its own until the batch is settled.
async fn run_lane(
    args: Arc<ConsumerArgs>,
    dispatch: Dispatch<uuid::Uuid, Item>,
    stop: watch::Receiver<bool>,
) {
    while let Some(mut taken) = dispatch.take(args.batch_size).await {
        let items = std::mem::take(&mut taken.items);
        if items.len() == 1 {
            handle_alone(&args, items, &stop).await;
        } else {
            handle_batch(&args, items, &stop).await;
        }
    }
}

fn incoming(items: &[Item]) -> Vec<Incoming> {
    items
        .iter()
        .map(|i| Incoming {
            event: i.event.clone(),
            delivered: i.delivered.clone(),
        })
        .collect()
}

/// What one attempt at a batch came to.
enum Attempt {
    Settled,
    /// Nothing committed; the items come back for another try.
    Unavailable(Vec<Item>, String),
    Failed(Vec<Item>, String),
}

async fn attempt(args: &ConsumerArgs, items: Vec<Item>) -> Attempt {
    match args.handler.handle(incoming(&items)).await {
        Ok(outcomes) if outcomes.len() == items.len() => {
            for (item, outcome) in items.into_iter().zip(outcomes) {
                settle(args, item, outcome).await;
            }
            Attempt::Settled
        }
        Ok(outcomes) => Attempt::Failed(
            items,
            format!("the handler answered {} outcomes", outcomes.len()),
        ),
        Err(HandleError::Unavailable(reason)) => Attempt::Unavailable(items, reason),
        Err(HandleError::Failed(reason)) => Attempt::Failed(items, reason),
    }
}

/// A batch of several: retried whole while the database is away; if it fails otherwise,
/// each event is retried alone so the failing one cannot hold back the others.
async fn handle_batch(args: &ConsumerArgs, mut items: Vec<Item>, stop: &watch::Receiver<bool>) {
    let mut outages = 0u32;
    loop {
        match attempt(args, items).await {
            Attempt::Settled => return,
            Attempt::Unavailable(back, reason) => {
                outages += 1;
                if !retry_later(args, &back, &reason, outages, stop).await {
                    return;
                }
                items = back;
            }
            Attempt::Failed(back, reason) => {
                tracing::warn!(
                    queue = args.input.queue,
                    reason,
                    size = back.len(),
                    "a batch failed; handling its events one by one"
                );
                // Boxed, as the rare path it is: inline, it would make every batch's
                // future larger by its size.
                for item in back {
                    Box::pin(handle_alone(args, vec![item], stop)).await;
                }
                return;
            }
        }
    }
}

/// One event: outages are retried without limit, failures `max_attempts` times, then the
/// event is dead-lettered.
async fn handle_alone(args: &ConsumerArgs, mut items: Vec<Item>, stop: &watch::Receiver<bool>) {
    let mut outages = 0u32;
    let mut failures = 0u32;
    loop {
        match attempt(args, items).await {
            Attempt::Settled => return,
            Attempt::Unavailable(back, reason) => {
                outages += 1;
                if !retry_later(args, &back, &reason, outages, stop).await {
                    return;
                }
                items = back;
            }
            Attempt::Failed(back, reason) => {
                failures += 1;
                tracing::warn!(queue = args.input.queue, reason, failures, "handler failed");
                if failures >= args.max_attempts {
                    let why = format!("failed {failures} times: {reason}");
                    for item in &back {
                        dead_letter(
                            args,
                            &item.channel,
                            &item.acks,
                            &item.delivery,
                            item.event.routing_key(),
                            &why,
                        )
                        .await;
                    }
                    return;
                }
                if !retry_later(args, &back, &reason, failures, stop).await {
                    return;
                }
                items = back;
            }
        }
    }
}

/// Acknowledges (through the channel's window) or dead-letters one delivery after its
/// batch committed.
async fn settle(args: &ConsumerArgs, item: Item, outcome: Outcome) {
    let queue = args.input.queue;
    let event_type = item.event.routing_key();
    let outcome = match outcome {
        Outcome::Applied => "processed",
        Outcome::Duplicate => "duplicate",
        Outcome::Invalid(reason) => {
            item.delivered.span.in_scope(|| {
                tracing::warn!(queue, event_type, reason, "dead-lettering an invalid event")
            });
            dead_letter(
                args,
                &item.channel,
                &item.acks,
                &item.delivery,
                event_type,
                &reason,
            )
            .await;
            return;
        }
    };
    item.acks
        .done(item.delivery.delivery_tag, item.delivery.acker.clone());
    args.metrics
        .consumed
        .with_label_values(&[queue, event_type, outcome])
        .inc();
    args.metrics
        .consume_duration
        .with_label_values(&[queue, event_type])
        .observe(item.received.elapsed().as_secs_f64());
}

/// Counts a retry of each item and waits out the backoff of `attempt`. `false` when the
/// node began stopping meanwhile: the items are then requeued for another consumer or a
/// later run.
async fn retry_later(
    args: &ConsumerArgs,
    items: &[Item],
    reason: &str,
    attempt: u32,
    stop: &watch::Receiver<bool>,
) -> bool {
    if attempt == 1 {
        tracing::warn!(
            queue = args.input.queue,
            reason,
            "cannot apply events yet; retrying with backoff"
        );
    }
    for item in items {
        args.metrics
            .consumed
            .with_label_values(&[args.input.queue, item.event.routing_key(), "retried"])
            .inc();
    }
    if wait_or_stop(
        crate::backoff::exponential(args.backoff_min, args.backoff_max, attempt),
        stop.clone(),
    )
    .await
    {
        return true;
    }
    for item in items {
        let _ = item
            .delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await;
        item.acks.released(item.delivery.delivery_tag);
    }
    false
}

/// Sleeps for `delay`; `false` if the node began stopping meanwhile.
async fn wait_or_stop(delay: Duration, mut stop: watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.changed() => false,
    }
}

/// The longest header value copied onto a dead letter: the copy's header frame must fit
/// the broker's frame limit, or the broker would close the connection.
const MAX_DEAD_LETTER_HEADER: usize = 1024;

/// Sets a message aside in `<queue>.dlq` with the reason in `x-dead-letter-reason` and its
/// origin in `x-original-exchange` / `x-original-routing-key`: the copy is published to the
/// queue's dead-letter exchange with confirms, then the original is acknowledged (a crash in
/// between leaves a duplicate in the DLQ, never a loss). If the copy cannot be published,
/// the original is rejected without requeue and the broker dead-letters it (without reason).
///
/// Boxed: it holds a publish's state, which every delivery's and batch's future would
/// otherwise carry and copy, though few are ever dead-lettered.
fn dead_letter(
    args: &ConsumerArgs,
    channel: &lapin::Channel,
    acks: &Acks,
    delivery: &Delivery,
    event_type: &str,
    reason: &str,
) -> impl Future<Output = ()> {
    Box::pin(set_aside(args, channel, acks, delivery, event_type, reason))
}

async fn set_aside(
    args: &ConsumerArgs,
    channel: &lapin::Channel,
    acks: &Acks,
    delivery: &Delivery,
    event_type: &str,
    reason: &str,
) {
    let queue = args.input.queue;
    let mut headers = FieldTable::default();
    if let Some(original) = delivery.properties.headers() {
        for (key, value) in original.inner() {
            let small = match value {
                AMQPValue::LongString(s) => s.as_bytes().len() <= MAX_DEAD_LETTER_HEADER,
                AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => false,
                _ => true,
            };
            if small {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    let reason: String = reason.chars().take(MAX_DEAD_LETTER_HEADER).collect();
    for (key, value) in [
        (topology::DEAD_LETTER_REASON_HEADER, reason.as_str()),
        (
            topology::ORIGINAL_EXCHANGE_HEADER,
            delivery.exchange.as_str(),
        ),
        (
            topology::ORIGINAL_ROUTING_KEY_HEADER,
            delivery.routing_key.as_str(),
        ),
    ] {
        headers.insert(key.into(), AMQPValue::LongString(value.into()));
    }
    let properties = delivery.properties.clone().with_headers(headers);
    let dlx = topology::dead_letter_exchange(queue);
    let copied = async {
        channel
            .basic_publish(
                dlx.as_str().into(),
                queue.into(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await?
            .await
    }
    .await;
    if matches!(copied, Ok(lapin::Confirmation::Ack(_))) {
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
    } else {
        let _ = delivery
            .acker
            .nack(BasicNackOptions {
                requeue: false,
                ..Default::default()
            })
            .await;
    }
    acks.released(delivery.delivery_tag);
    args.metrics
        .consumed
        .with_label_values(&[queue, event_type, "dead_lettered"])
        .inc();
}

/// Hands a batch to the node's store workers and waits for the outcomes: a full queue, a
/// worker that is too slow or dies meanwhile is a handler failure (each event is then
/// retried alone, bounded), and the store's own error is classified by the node through
/// `From<E> for HandleError`.
pub async fn ask_workers<J, E>(
    workers: &crate::supervision::WorkerPool<J>,
    timeout: Duration,
    build: impl FnOnce(ractor::RpcReplyPort<Result<Vec<Outcome>, E>>) -> J,
) -> Result<Vec<Outcome>, HandleError>
where
    J: Send + 'static,
    E: Send + 'static,
    HandleError: From<E>,
{
    match workers.queue().call(build, timeout).await {
        Ok(result) => result.map_err(HandleError::from),
        Err(e) => Err(HandleError::Failed(format!("store workers: {e}"))),
    }
}

//! The consumer bridge actor: deliveries → decoded contract events → the node's handler
//! (which sends actor messages to its store workers) → ack after commit.
//!
//! Owns: one channel and one `basic.consume` on its queue, and the deliveries in flight.
//! Takes: `Subscribe` (sent to itself on start and after the stream ends) and
//! `StreamEnded`. Deliveries are handled concurrently, bounded by the prefetch.
//!
//! - undecodable, invalid or oversized body → rejected without requeue → `<queue>.dlq`;
//! - handler says the database is unavailable → retried in place with capped backoff
//!   (never requeued in a hot loop);
//! - handler fails otherwise → retried up to `max_attempts`, then dead-lettered.
//!
//! When the connection dies the stream ends and the actor re-subscribes with backoff; the
//! broker redelivers what was unacknowledged and the inbox makes that harmless. On failure
//! its supervisor restarts it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use contracts::{Event, topology};

use super::link::{LinkMsg, open_channel};
use crate::metrics::Metrics;
use crate::outbox::Causation;
use crate::supervision::ChildHandle;

/// Transport facts about a delivery that handlers may use (trace context, request id).
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    pub cause: Causation,
    pub redelivered: bool,
}

/// What a handler did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Applied,
    /// Seen before (inbox hit): acknowledged, nothing changed.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The event can never be applied (e.g. breaks a domain rule): dead-letter it.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// A dependency is down (database): retry with backoff, indefinitely.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else: retry a bounded number of times, then dead-letter.
    #[error("failed: {0}")]
    Failed(String),
}

pub type HandleFuture = Pin<Box<dyn Future<Output = Result<Handled, HandleError>> + Send>>;

/// The node's side of the bridge.
pub trait EventHandler: Send + Sync + 'static {
    fn handle(&self, event: Event, delivered: Delivered) -> HandleFuture;
}

#[derive(Clone)]
pub struct ConsumerArgs {
    pub queue: &'static str,
    pub consumer_tag: String,
    pub link: ChildHandle<LinkMsg>,
    pub handler: Arc<dyn EventHandler>,
    pub prefetch: u16,
    pub max_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub shutdown_grace: Duration,
    pub metrics: Metrics,
}

pub enum ConsumerMsg {
    Subscribe,
    StreamEnded { generation: u64, reason: String },
}

pub struct Consumer;

pub struct ConsumerState {
    args: Arc<ConsumerArgs>,
    generation: u64,
    failures: u32,
    stop: watch::Sender<bool>,
    stream_task: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for Consumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerMsg>,
        args: ConsumerArgs,
    ) -> Result<ConsumerState, ActorProcessingErr> {
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
        match msg {
            ConsumerMsg::Subscribe => match subscribe(&state.args).await {
                Ok(stream) => {
                    state.generation += 1;
                    state.failures = 0;
                    let generation = state.generation;
                    tracing::info!(queue = state.args.queue, "consuming");
                    let args = state.args.clone();
                    let stop = state.stop.subscribe();
                    let me = myself.clone();
                    state.stream_task = Some(tokio::spawn(async move {
                        let reason = run_stream(args, stream, stop).await;
                        let _ = me.cast(ConsumerMsg::StreamEnded { generation, reason });
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
                        tracing::warn!(queue = state.args.queue, error = %e, "cannot consume yet; retrying with backoff");
                    }
                    myself.send_after(delay, || ConsumerMsg::Subscribe);
                }
            },
            ConsumerMsg::StreamEnded { generation, reason } => {
                if generation == state.generation && !*state.stop.borrow() {
                    tracing::warn!(
                        queue = state.args.queue,
                        reason,
                        "consumer stream ended; re-subscribing"
                    );
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
    let consumer = channel
        .basic_consume(
            args.queue.into(),
            args.consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Reads deliveries until the stream ends or `stop` is raised; returns why it ended.
async fn run_stream(
    args: Arc<ConsumerArgs>,
    (channel, mut consumer): (lapin::Channel, lapin::Consumer),
    mut stop: watch::Receiver<bool>,
) -> String {
    let mut in_flight = JoinSet::new();
    let reason = loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = channel.basic_cancel(args.consumer_tag.as_str().into(), BasicCancelOptions::default()).await;
                break "stopping".to_owned();
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    in_flight.spawn(process(args.clone(), delivery, stop.clone()));
                }
                Some(Err(e)) => break e.to_string(),
                None => break "consumer canceled".to_owned(),
            },
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    };
    let drain = async { while in_flight.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(args.shutdown_grace, drain).await;
    let _ = channel.close(200, "consumer done".into()).await;
    reason
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

/// Handles one delivery inside a consumer span that continues the producer's trace.
async fn process(args: Arc<ConsumerArgs>, delivery: Delivery, stop: watch::Receiver<bool>) {
    let headers = delivery.properties.headers();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("{} process", args.queue),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %delivery.exchange,
        messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
        messaging.message.id = %message_id,
        messaging.consumer.group.name = args.queue,
    );
    crate::telemetry::set_remote_parent(
        &span,
        header_str(headers, topology::TRACEPARENT_HEADER).as_deref(),
        header_str(headers, topology::TRACESTATE_HEADER).as_deref(),
    );
    handle_delivery(args, delivery, stop).instrument(span).await
}

async fn handle_delivery(args: Arc<ConsumerArgs>, delivery: Delivery, stop: watch::Receiver<bool>) {
    let started = Instant::now();
    let queue = args.queue;
    let event = match decode_delivery(&delivery) {
        Ok(event) => event,
        Err(reason) => {
            tracing::warn!(
                queue,
                reason,
                "dead-lettering a message that cannot be decoded"
            );
            dead_letter(&args, &delivery, "undecodable").await;
            return;
        }
    };
    let event_type = event.routing_key();
    let headers = delivery.properties.headers();
    // Events this delivery causes continue from the consumer span, and keep the request id.
    let from_headers = Causation {
        traceparent: header_str(headers, topology::TRACEPARENT_HEADER),
        tracestate: header_str(headers, topology::TRACESTATE_HEADER),
        request_id: None,
    };
    let delivered = Delivered {
        cause: Causation::current(
            header_str(headers, topology::REQUEST_ID_HEADER),
            &from_headers,
        ),
        redelivered: delivery.redelivered,
    };
    let mut failures = 0u32;
    let mut outages = 0u32;
    loop {
        match args.handler.handle(event.clone(), delivered.clone()).await {
            Ok(handled) => {
                let outcome = if handled == Handled::Duplicate {
                    "duplicate"
                } else {
                    "processed"
                };
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    // The channel died after commit: the broker redelivers, the inbox dedups.
                    tracing::warn!(queue, error = %e, "ack failed after commit; expecting a redelivery");
                }
                args.metrics
                    .consumed
                    .with_label_values(&[queue, event_type, outcome])
                    .inc();
                args.metrics
                    .consume_duration
                    .with_label_values(&[queue, event_type])
                    .observe(started.elapsed().as_secs_f64());
                return;
            }
            Err(HandleError::Invalid(reason)) => {
                tracing::warn!(queue, event_type, reason, "dead-lettering an invalid event");
                dead_letter(&args, &delivery, event_type).await;
                return;
            }
            Err(HandleError::Unavailable(reason)) => {
                outages += 1;
                if outages == 1 {
                    tracing::warn!(
                        queue,
                        event_type,
                        reason,
                        "dependency unavailable; retrying with backoff"
                    );
                }
                if !retry_later(&args, &delivery, event_type, outages, &stop).await {
                    return;
                }
            }
            Err(HandleError::Failed(reason)) => {
                failures += 1;
                tracing::warn!(queue, event_type, reason, failures, "handler failed");
                if failures >= args.max_attempts {
                    dead_letter(&args, &delivery, event_type).await;
                    return;
                }
                if !retry_later(&args, &delivery, event_type, failures, &stop).await {
                    return;
                }
            }
        }
    }
}

/// Asks the next store worker to apply an event: a worker that is restarting, too slow or
/// dies meanwhile is a handler failure (retried, bounded), and the store's own error is
/// classified by the node through `From<E> for HandleError`.
pub async fn ask_worker<M, T, E>(
    workers: &crate::supervision::WorkerPool<M>,
    timeout: Duration,
    build: impl FnOnce(ractor::RpcReplyPort<Result<T, E>>) -> M,
) -> Result<T, HandleError>
where
    M: ractor::Message,
    T: Send + 'static,
    E: Send + 'static,
    HandleError: From<E>,
{
    let worker = workers
        .pick()
        .ok_or_else(|| HandleError::Failed("no store worker is running".into()))?;
    match worker.call(build, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(result)) => result.map_err(HandleError::from),
        Ok(ractor::rpc::CallResult::Timeout) => {
            Err(HandleError::Failed("the store worker timed out".into()))
        }
        _ => Err(HandleError::Failed(
            "the store worker stopped while handling the event".into(),
        )),
    }
}

/// Counts a retry and waits out the backoff of `attempt`. `false` when the node began
/// stopping meanwhile: the message is then requeued for another consumer or a later run.
async fn retry_later(
    args: &ConsumerArgs,
    delivery: &Delivery,
    event_type: &str,
    attempt: u32,
    stop: &watch::Receiver<bool>,
) -> bool {
    args.metrics
        .consumed
        .with_label_values(&[args.queue, event_type, "retried"])
        .inc();
    if wait_or_stop(
        crate::backoff::exponential(args.backoff_min, args.backoff_max, attempt),
        stop.clone(),
    )
    .await
    {
        return true;
    }
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
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

async fn dead_letter(args: &ConsumerArgs, delivery: &Delivery, event_type: &str) {
    // Reject without requeue: the queue's dead-letter exchange routes it to `<queue>.dlq`.
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await;
    args.metrics
        .consumed
        .with_label_values(&[args.queue, event_type, "dead_lettered"])
        .inc();
}

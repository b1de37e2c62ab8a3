//! The AMQP link actor.
//!
//! Owns: one lapin connection of the node (a node has two: one to publish on, one to consume
//! on). Takes: [`LinkMsg::Channel`] requests (from the outbox relay or the consumer), and its
//! own `Connect`/`Lost` messages. It connects with
//! exponential backoff, re-declares the topology on every connect, and notices a dead
//! connection through heartbeats and lapin's error events. lapin's experimental
//! auto-recovery is deliberately not used. Its state is published on a watch channel for
//! readiness and metrics.
//!
//! On failure its supervisor restarts it, which opens a fresh connection; users of channels
//! notice their channel died and ask again.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use crate::config::SecretUrl;
use crate::metrics::Metrics;

/// The broker connection as others see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    Connecting,
    Connected,
    Disconnected,
}

impl BrokerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Connecting => "connecting",
            BrokerState::Connected => "connected",
            BrokerState::Disconnected => "disconnected",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the AMQP link is down")]
    LinkDown,
}

pub enum LinkMsg {
    /// Try to connect now (sent by the actor itself, on start and after backoff).
    Connect,
    /// The connection of `generation` died.
    Lost { generation: u64, reason: String },
    /// A new channel on the current connection.
    Channel(RpcReplyPort<Result<Channel, LinkError>>),
    /// Fault injection (`FAULT_INJECTION=on`): panic, as a bug would.
    Panic,
}

#[derive(Clone)]
pub struct LinkArgs {
    pub url: SecretUrl,
    /// The connection's name as the broker shows it.
    pub app_id: String,
    /// `publish` or `consume`: the `link` label of `amqp_connection_up`.
    pub role: &'static str,
    pub heartbeat: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub state: watch::Sender<BrokerState>,
    pub metrics: Metrics,
}

pub struct AmqpLink;

pub struct LinkState {
    args: LinkArgs,
    connection: Option<Connection>,
    generation: u64,
    failures: u32,
    connect_scheduled: bool,
}

impl LinkState {
    fn set(&self, state: BrokerState) {
        self.args.state.send_replace(state);
        self.args
            .metrics
            .amqp_up
            .with_label_values(&[self.args.role])
            .set(i64::from(state == BrokerState::Connected));
    }

    fn backoff(&self) -> Duration {
        crate::backoff::exponential(self.args.backoff_min, self.args.backoff_max, self.failures)
    }

    fn schedule_connect(&mut self, myself: &ActorRef<LinkMsg>) {
        if !self.connect_scheduled {
            self.connect_scheduled = true;
            myself.send_after(self.backoff(), || LinkMsg::Connect);
        }
    }
}

/// The URL with a heartbeat, unless the operator set one.
fn with_heartbeat(url: &str, heartbeat: Duration) -> String {
    if url.contains("heartbeat=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}heartbeat={}", heartbeat.as_secs().max(1))
}

impl AmqpLink {
    async fn connect(&self, myself: &ActorRef<LinkMsg>, state: &mut LinkState) {
        state.connect_scheduled = false;
        if state.connection.is_some() {
            return;
        }
        state.set(BrokerState::Connecting);
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(state.args.app_id.as_str()));
        let url = with_heartbeat(state.args.url.expose(), state.args.heartbeat);
        let result = async {
            let conn = Connection::connect(&url, props).await?;
            let channel = conn.create_channel().await?;
            super::topology::declare(&channel).await?;
            let _ = channel.close(200, "topology declared".into()).await;
            Ok::<_, lapin::Error>(conn)
        }
        .await;
        match result {
            Ok(conn) => {
                state.generation += 1;
                state.failures = 0;
                let generation = state.generation;
                let me = myself.clone();
                on_failure(&conn, move |e| {
                    let _ = me.cast(LinkMsg::Lost {
                        generation,
                        reason: e.to_string(),
                    });
                });
                state.connection = Some(conn);
                state
                    .args
                    .metrics
                    .amqp_connects
                    .with_label_values(&[state.args.role, "ok"])
                    .inc();
                tracing::info!(broker = %state.args.url, generation, "connected to the broker; topology declared");
                state.set(BrokerState::Connected);
            }
            Err(e) => {
                state.failures += 1;
                state
                    .args
                    .metrics
                    .amqp_connects
                    .with_label_values(&[state.args.role, "error"])
                    .inc();
                let retry_in = state.backoff();
                tracing::warn!(broker = %state.args.url, error = %e, ?retry_in, "cannot connect to the broker");
                state.set(BrokerState::Disconnected);
                state.schedule_connect(myself);
            }
        }
    }

    fn lost(&self, myself: &ActorRef<LinkMsg>, state: &mut LinkState, reason: &str) {
        if state.connection.take().is_some() {
            tracing::warn!(reason, "broker connection lost; reconnecting");
        }
        state.set(BrokerState::Disconnected);
        state.failures = state.failures.max(1);
        state.schedule_connect(myself);
    }
}

impl Actor for AmqpLink {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LinkMsg>,
        args: LinkArgs,
    ) -> Result<LinkState, ActorProcessingErr> {
        // Connect after start: a broker that is down must not keep the node from serving.
        myself.cast(LinkMsg::Connect)?;
        Ok(LinkState {
            args,
            connection: None,
            generation: 0,
            failures: 0,
            connect_scheduled: true,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LinkMsg>,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(conn) = state.connection.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                conn.close(200, "node shutting down".into()),
            )
            .await;
        }
        state.set(BrokerState::Disconnected);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<LinkMsg>,
        msg: LinkMsg,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LinkMsg::Panic => panic!("injected fault: {} link panic", state.args.role),
            LinkMsg::Connect => self.connect(&myself, state).await,
            LinkMsg::Lost { generation, reason } => {
                if generation == state.generation {
                    self.lost(&myself, state, &reason);
                }
            }
            LinkMsg::Channel(reply) => {
                let result = match &state.connection {
                    None => Err(LinkError::NotConnected),
                    Some(conn) => conn.create_channel().await.map_err(LinkError::from),
                };
                if let Err(LinkError::Broker(e)) = &result {
                    self.lost(&myself, state, &e.to_string());
                }
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

/// Asks the link for a channel; any failure (link restarting, no connection) is an error
/// the caller retries with backoff.
pub async fn open_channel(
    link: &crate::supervision::ChildHandle<LinkMsg>,
) -> Result<Channel, LinkError> {
    let actor = link.get().ok_or(LinkError::LinkDown)?;
    match actor
        .call(LinkMsg::Channel, Some(Duration::from_secs(10)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(result)) => result,
        _ => Err(LinkError::LinkDown),
    }
}

/// Headers as a lapin field table.
pub fn header_table(pairs: impl IntoIterator<Item = (&'static str, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(k.into(), v);
    }
    table
}

/// Calls `on_error` with the cause once `connection` fails. lapin gives the cause only as a
/// connection event; a later call on the connection sees just its state ("invalid
/// connection state: Error").
pub fn on_failure(
    connection: &lapin::Connection,
    on_error: impl FnOnce(lapin::Error) + Send + 'static,
) {
    let mut events = connection.events_listener();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                on_error(e);
                return;
            }
        }
    });
}

//! The invoices store worker actor — one of a pool of N, so invoices are handled
//! concurrently.
//!
//! Owns: a handle on the shared sqlx pool (state lives in PostgreSQL) and the payment terms.
//! Takes: [`StoreMsg`] from HTTP routes and from the order-events handler; answers on the
//! message's reply port. After committing an event it wakes the outbox relay.
//! On failure (panic) its supervisor, `invoices-node/store`, restarts it with backoff; the
//! request or delivery it was serving is answered 503 or retried.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sqlx::PgPool;
use uuid::Uuid;

use actors::amqp::Handled;
use actors::metrics::Metrics;
use actors::outbox::Causation;
use actors::relay::OutboxNotifier;
use contracts::Event;

use crate::domain::Invoice;
use crate::store::{self, Effect, ListFilter, StoreError};

pub enum StoreMsg {
    Get {
        id: Uuid,
        reply: RpcReplyPort<Result<Invoice, StoreError>>,
    },
    List {
        filter: ListFilter,
        reply: RpcReplyPort<Result<Vec<Invoice>, StoreError>>,
    },
    Pay {
        id: Uuid,
        cause: Causation,
        reply: RpcReplyPort<Result<Invoice, StoreError>>,
    },
    ApplyOrderEvent {
        event: Event,
        cause: Causation,
        reply: RpcReplyPort<Result<Handled, StoreError>>,
    },
    /// Fault injection for tests and drills: the worker panics. Not reachable over HTTP.
    Panic,
}

#[derive(Clone)]
pub struct WorkerArgs {
    pub pool: PgPool,
    pub notifier: OutboxNotifier,
    pub metrics: Metrics,
    pub payment_terms: Duration,
}

pub struct StoreWorker;

impl Actor for StoreWorker {
    type Msg = StoreMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<StoreMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<StoreMsg>,
        msg: StoreMsg,
        s: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        let count = |outcome: &str| {
            s.metrics
                .domain
                .with_label_values(&["invoice", outcome])
                .inc()
        };
        match msg {
            StoreMsg::Get { id, reply } => {
                let _ = reply.send(store::get(&s.pool, id).await);
            }
            StoreMsg::List { filter, reply } => {
                let _ = reply.send(store::list(&s.pool, &filter).await);
            }
            StoreMsg::Pay { id, cause, reply } => {
                let result = store::pay(&s.pool, id, &cause).await;
                if let Ok((_, true)) = &result {
                    s.notifier.notify();
                    count("paid");
                }
                let _ = reply.send(result.map(|(invoice, _)| invoice));
            }
            StoreMsg::ApplyOrderEvent {
                event,
                cause,
                reply,
            } => {
                let result =
                    store::apply_order_event(&s.pool, &event, s.payment_terms, &cause).await;
                if let Ok((_, effect)) = &result {
                    match effect {
                        Effect::Issued => count("issued"),
                        Effect::Voided | Effect::IssuedVoid => count("voided"),
                        Effect::Tombstoned | Effect::Nothing => {}
                    }
                    if matches!(effect, Effect::Issued | Effect::Voided | Effect::IssuedVoid) {
                        s.notifier.notify();
                    }
                }
                let _ = reply.send(result.map(|(handled, _)| handled));
            }
            StoreMsg::Panic => panic!("injected fault: store worker panic"),
        }
        Ok(())
    }
}

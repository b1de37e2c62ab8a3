//! The orders store worker actor — one of a pool of N, so orders are handled concurrently.
//!
//! Owns: nothing but a handle on the shared sqlx pool (state lives in PostgreSQL).
//! Takes: [`StoreMsg`] from HTTP routes and from the invoice-events handler; answers on the
//! message's reply port. After committing an event it wakes the outbox relay.
//! On failure (panic) its supervisor, `orders-node/store`, restarts it with backoff; the
//! request it was serving gets a 503 and may be retried.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sqlx::PgPool;
use uuid::Uuid;

use actors::amqp::Handled;
use actors::metrics::Metrics;
use actors::outbox::Causation;
use actors::relay::OutboxNotifier;
use contracts::Event;

use crate::domain::{NewOrder, Order, OrderStatus};
use crate::store::{self, Created, ListFilter, StoreError};

pub enum StoreMsg {
    Create {
        order: NewOrder,
        key: Option<String>,
        cause: Causation,
        reply: RpcReplyPort<Result<Created, StoreError>>,
    },
    Get {
        id: Uuid,
        reply: RpcReplyPort<Result<Order, StoreError>>,
    },
    List {
        filter: ListFilter,
        reply: RpcReplyPort<Result<Vec<Order>, StoreError>>,
    },
    Cancel {
        id: Uuid,
        reason: Option<String>,
        cause: Causation,
        reply: RpcReplyPort<Result<Order, StoreError>>,
    },
    ApplyInvoiceEvent {
        event: Event,
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
                .with_label_values(&["order", outcome])
                .inc()
        };
        match msg {
            StoreMsg::Create {
                order,
                key,
                cause,
                reply,
            } => {
                let result = store::create(&s.pool, &order, key.as_deref(), &cause).await;
                match &result {
                    Ok(Created::New(_)) => {
                        s.notifier.notify();
                        count("created");
                    }
                    Ok(Created::Replayed { .. }) => count("replayed"),
                    Err(_) => {}
                }
                let _ = reply.send(result);
            }
            StoreMsg::Get { id, reply } => {
                let _ = reply.send(store::get(&s.pool, id).await);
            }
            StoreMsg::List { filter, reply } => {
                let _ = reply.send(store::list(&s.pool, &filter).await);
            }
            StoreMsg::Cancel {
                id,
                reason,
                cause,
                reply,
            } => {
                let result = store::cancel(&s.pool, id, reason, &cause).await;
                if let Ok((_, true)) = &result {
                    s.notifier.notify();
                    count("canceled");
                }
                let _ = reply.send(result.map(|(order, _)| order));
            }
            StoreMsg::ApplyInvoiceEvent { event, reply } => {
                let result = store::apply_invoice_event(&s.pool, &event).await;
                if let Ok((_, Some(status))) = &result {
                    count(match status {
                        OrderStatus::Invoiced => "invoiced",
                        OrderStatus::Paid => "paid",
                        _ => "updated",
                    });
                }
                let _ = reply.send(result.map(|(handled, _)| handled));
            }
            StoreMsg::Panic => panic!("injected fault: store worker panic"),
        }
        Ok(())
    }
}

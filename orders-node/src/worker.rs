//! The orders store: what a store worker does with the jobs it pulls.
//!
//! Store workers are a pool of supervised `actors::supervision::PullWorker`s sharing one
//! queue (`orders-node/store/worker-N`); each takes everything that waits (up to
//! `STORE_BATCH_SIZE`) and hands it to [`OrdersStore`]. The creates among those jobs commit
//! together in one transaction (group commit), and so do the consumer's batches of
//! `invoice.*` events (`actors::amqp::merge`), the two transactions side by side; the rest
//! are served one by one. State lives in PostgreSQL; after committing events the store
//! wakes the outbox relay.
//! On failure (panic) a worker's supervisor, `orders-node/store`, restarts it with backoff;
//! the callers of the batch it held get a 503 (nothing of an uncommitted batch was kept).

use ractor::RpcReplyPort;
use sqlx::PgPool;
use uuid::Uuid;

use actors::amqp::merge::{self, BatchReply};
use actors::amqp::{HandleError, Incoming, Outcome};
use actors::db::Connections;
use actors::metrics::Metrics;
use actors::outbox::Causation;
use actors::relay::OutboxNotifier;
use actors::supervision::Batches;

use crate::domain::{Order, OrderStatus};
use crate::store::{self, CreateRequest, Created, ListFilter, StoreError};

/// A job for the store workers: the kinds a worker batches, and the rest.
pub enum StoreMsg {
    Create {
        request: CreateRequest,
        reply: RpcReplyPort<Result<Created, StoreError>>,
    },
    /// A batch of `invoice.*` deliveries, applied in one transaction (with the other lanes'
    /// batches the same worker takes; see `actors::amqp::merge`).
    ApplyInvoiceEvents {
        batch: Vec<Incoming>,
        reply: BatchReply,
    },
    /// Served one by one, after the batches the worker took with it.
    Single(SingleJob),
}

/// A store job served on its own.
pub enum SingleJob {
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
}

pub struct OrdersStore {
    pub pool: PgPool,
    /// For the hot path (creates and consumed events); `pool` serves the rest.
    pub connections: Connections,
    pub notifier: OutboxNotifier,
    pub metrics: Metrics,
}

/// `domain_events_total{entity="order", outcome}`
pub const OUTCOMES: [&str; 5] = ["created", "replayed", "canceled", "invoiced", "paid"];

impl OrdersStore {
    fn count(&self, outcome: &str) {
        self.metrics
            .domain
            .with_label_values(&["order", outcome])
            .inc();
    }

    async fn create_all(
        &self,
        creates: Vec<(CreateRequest, RpcReplyPort<Result<Created, StoreError>>)>,
    ) {
        if creates.is_empty() {
            return;
        }
        let (requests, replies): (Vec<_>, Vec<_>) = creates.into_iter().unzip();
        let group = store::create_many(&self.connections, &requests).await;
        // Published before the callers hear back: a reply wakes an HTTP task, and the
        // events should not wait behind it.
        self.notifier.publish(group.events);
        for (result, reply) in group.results.into_iter().zip(replies) {
            match &result {
                Ok(Created::New(_)) => self.count("created"),
                Ok(Created::Replayed { .. }) => self.count("replayed"),
                Err(_) => {}
            }
            let _ = reply.send(result);
        }
    }

    async fn serve(&self, job: SingleJob) {
        match job {
            SingleJob::Get { id, reply } => {
                let _ = reply.send(store::get(&self.pool, id).await);
            }
            SingleJob::List { filter, reply } => {
                let _ = reply.send(store::list(&self.pool, &filter).await);
            }
            SingleJob::Cancel {
                id,
                reason,
                cause,
                reply,
            } => {
                let result = store::cancel(&self.pool, id, reason, &cause).await;
                if let Ok((_, true)) = &result {
                    self.notifier.notify();
                    self.count("canceled");
                }
                let _ = reply.send(result.map(|(order, _)| order));
            }
        }
    }

    async fn apply_invoice_events(&self, batch: &[Incoming]) -> Result<Vec<Outcome>, HandleError> {
        let outcomes = store::apply_invoice_events(&self.connections, batch).await?;
        for (_, status) in &outcomes {
            match status {
                Some(OrderStatus::Invoiced) => self.count("invoiced"),
                Some(OrderStatus::Paid) => self.count("paid"),
                _ => {}
            }
        }
        Ok(outcomes.into_iter().map(|(outcome, _)| outcome).collect())
    }
}

impl Batches for OrdersStore {
    type Job = StoreMsg;

    async fn handle(&self, jobs: Vec<StoreMsg>) {
        let mut creates = Vec::new();
        let mut consumed = Vec::new();
        let mut others = Vec::new();
        for job in jobs {
            match job {
                StoreMsg::Create { request, reply } => creates.push((request, reply)),
                StoreMsg::ApplyInvoiceEvents { batch, reply } => consumed.push((batch, reply)),
                StoreMsg::Single(job) => others.push(job),
            }
        }
        // Side by side, on two connections: a create's answer should not wait for the
        // commit of consumed events that happened to be taken with it, nor they for it.
        // They touch different rows (a create inserts orders no event names yet).
        tokio::join!(
            self.create_all(creates),
            merge::apply_all(consumed, |batch| async move {
                self.apply_invoice_events(&batch).await
            }),
        );
        // Boxed: a single job runs on the pool, whose acquire future is ~14 KB; inline, it
        // would make every batch's future that large, copied whole for each batch.
        for job in others {
            Box::pin(self.serve(job)).await;
        }
    }
}

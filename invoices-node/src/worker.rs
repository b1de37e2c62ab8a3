//! The invoices store: what a store worker does with the jobs it pulls.
//!
//! Store workers are a pool of supervised `actors::supervision::PullWorker`s sharing one
//! queue (`invoices-node/store/worker-N`); each takes everything that waits and hands it to
//! [`InvoicesStore`], which applies the consumer's batches of deliveries among them in one
//! transaction (`actors::amqp::merge`) and serves the rest one by one. State lives in
//! PostgreSQL, with the payment terms in config; after committing events the store wakes
//! the outbox relay.
//! On failure (panic) a worker's supervisor, `invoices-node/store`, restarts it with
//! backoff; the callers of the batch it held get a 503, deliveries are retried.

use std::time::Duration;

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

use crate::domain::Invoice;
use crate::store::{self, Effect, ListFilter, StoreError};

/// A job for the store workers: the kind a worker batches, and the rest.
pub enum StoreMsg {
    /// A batch of `order.*` deliveries, applied in one transaction (with the other lanes'
    /// batches the same worker takes; see `actors::amqp::merge`).
    ApplyOrderEvents {
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
}

pub struct InvoicesStore {
    pub pool: PgPool,
    /// For the hot path (consumed events); `pool` serves the rest.
    pub connections: Connections,
    pub notifier: OutboxNotifier,
    pub metrics: Metrics,
    pub payment_terms: Duration,
}

/// `domain_events_total{entity="invoice", outcome}`
pub const OUTCOMES: [&str; 3] = ["issued", "voided", "paid"];

impl InvoicesStore {
    fn count(&self, outcome: &str) {
        self.metrics
            .domain
            .with_label_values(&["invoice", outcome])
            .inc();
    }

    async fn serve(&self, job: SingleJob) {
        match job {
            SingleJob::Get { id, reply } => {
                let _ = reply.send(store::get(&self.pool, id).await);
            }
            SingleJob::List { filter, reply } => {
                let _ = reply.send(store::list(&self.pool, &filter).await);
            }
            SingleJob::Pay { id, cause, reply } => {
                let result = store::pay(&self.pool, id, &cause).await;
                if let Ok((_, true)) = &result {
                    self.notifier.notify();
                    self.count("paid");
                }
                let _ = reply.send(result.map(|(invoice, _)| invoice));
            }
        }
    }

    async fn apply_order_events(&self, batch: &[Incoming]) -> Result<Vec<Outcome>, HandleError> {
        let applied =
            store::apply_order_events(&self.connections, batch, self.payment_terms).await?;
        // Events the relay publishes at once; any others wait for a pass.
        let leased = !applied.events.is_empty();
        self.notifier.publish(applied.events);
        let mut published = false;
        for (_, effect) in &applied.outcomes {
            match effect {
                Effect::Issued => self.count("issued"),
                Effect::Voided | Effect::IssuedVoid => self.count("voided"),
                Effect::Tombstoned | Effect::Nothing => {}
            }
            published |= matches!(effect, Effect::Issued | Effect::Voided | Effect::IssuedVoid);
        }
        if published && !leased {
            self.notifier.notify();
        }
        Ok(applied
            .outcomes
            .into_iter()
            .map(|(outcome, _)| outcome)
            .collect())
    }
}

impl Batches for InvoicesStore {
    type Job = StoreMsg;

    async fn handle(&self, jobs: Vec<StoreMsg>) {
        let mut consumed = Vec::new();
        let mut others = Vec::new();
        for job in jobs {
            match job {
                StoreMsg::ApplyOrderEvents { batch, reply } => consumed.push((batch, reply)),
                StoreMsg::Single(job) => others.push(job),
            }
        }
        merge::apply_all(consumed, |batch| async move {
            self.apply_order_events(&batch).await
        })
        .await;
        // Boxed: a single job runs on the pool, whose acquire future is ~14 KB; inline, it
        // would make every batch's future that large, copied whole for each batch.
        for job in others {
            Box::pin(self.serve(job)).await;
        }
    }
}

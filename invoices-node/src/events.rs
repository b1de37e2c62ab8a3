//! `order.*` deliveries → one store job per batch. The consumer bridge acks after this
//! returns.

use std::sync::Arc;
use std::time::Duration;

use actors::amqp::consumer::HandleFuture;
use actors::amqp::{EventHandler, HandleError, Incoming, ask_workers};
use actors::supervision::WorkerPool;

use crate::store::StoreError;
use crate::worker::StoreMsg;

pub struct OrderEvents {
    pub workers: WorkerPool<StoreMsg>,
    pub timeout: Duration,
}

impl From<StoreError> for HandleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => HandleError::Unavailable(e.to_string()),
            other => HandleError::Failed(other.to_string()),
        }
    }
}

impl EventHandler for OrderEvents {
    fn handle(&self, batch: Vec<Incoming>) -> HandleFuture {
        let workers = self.workers.clone();
        let timeout = self.timeout;
        // The invoice's events continue the trace and request of the order that caused
        // them: each delivery carries its cause.
        Box::pin(async move {
            ask_workers(&workers, timeout, |reply| StoreMsg::ApplyOrderEvents {
                batch,
                reply,
            })
            .await
        })
    }
}

pub fn handler(workers: WorkerPool<StoreMsg>, timeout: Duration) -> Arc<dyn EventHandler> {
    Arc::new(OrderEvents { workers, timeout })
}

//! `invoice.*` deliveries → one store job per batch. The consumer bridge acks after this
//! returns.

use std::sync::Arc;
use std::time::Duration;

use actors::amqp::consumer::HandleFuture;
use actors::amqp::{EventHandler, HandleError, Incoming, ask_workers};
use actors::supervision::WorkerPool;

use crate::store::StoreError;
use crate::worker::StoreMsg;

pub struct InvoiceEvents {
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

impl EventHandler for InvoiceEvents {
    fn handle(&self, batch: Vec<Incoming>) -> HandleFuture {
        let workers = self.workers.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            ask_workers(&workers, timeout, |reply| StoreMsg::ApplyInvoiceEvents {
                batch,
                reply,
            })
            .await
        })
    }
}

pub fn handler(workers: WorkerPool<StoreMsg>, timeout: Duration) -> Arc<dyn EventHandler> {
    Arc::new(InvoiceEvents { workers, timeout })
}

//! `invoice.*` events → store worker messages. The consumer bridge acks after this returns.

use std::sync::Arc;
use std::time::Duration;

use actors::amqp::consumer::HandleFuture;
use actors::amqp::{Delivered, EventHandler, HandleError, ask_worker};
use actors::supervision::WorkerPool;
use contracts::Event;

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
            StoreError::UnknownOrder(_) | StoreError::WrongEvent(_) => {
                HandleError::Invalid(e.to_string())
            }
            other => HandleError::Failed(other.to_string()),
        }
    }
}

impl EventHandler for InvoiceEvents {
    fn handle(&self, event: Event, _delivered: Delivered) -> HandleFuture {
        let workers = self.workers.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            ask_worker(&workers, timeout, |reply| StoreMsg::ApplyInvoiceEvent {
                event,
                reply,
            })
            .await
        })
    }
}

pub fn handler(workers: WorkerPool<StoreMsg>, timeout: Duration) -> Arc<dyn EventHandler> {
    Arc::new(InvoiceEvents { workers, timeout })
}

//! `order.*` events → store worker messages. The consumer bridge acks after this returns.

use std::sync::Arc;
use std::time::Duration;

use actors::amqp::consumer::HandleFuture;
use actors::amqp::{Delivered, EventHandler, HandleError, ask_worker};
use actors::supervision::WorkerPool;
use contracts::Event;

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
            StoreError::WrongEvent(_) | StoreError::InvalidEvent(_) => {
                HandleError::Invalid(e.to_string())
            }
            other => HandleError::Failed(other.to_string()),
        }
    }
}

impl EventHandler for OrderEvents {
    fn handle(&self, event: Event, delivered: Delivered) -> HandleFuture {
        let workers = self.workers.clone();
        let timeout = self.timeout;
        // The invoice's events continue the trace and request of the order that caused them.
        let cause = delivered.cause;
        Box::pin(async move {
            ask_worker(&workers, timeout, |reply| StoreMsg::ApplyOrderEvent {
                event,
                cause,
                reply,
            })
            .await
        })
    }
}

pub fn handler(workers: WorkerPool<StoreMsg>, timeout: Duration) -> Arc<dyn EventHandler> {
    Arc::new(OrderEvents { workers, timeout })
}

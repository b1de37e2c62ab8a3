//! Calling the store workers from a request handler: a saturated, restarting or slow pool
//! becomes a 503 with `Retry-After`, never a hang or a 500.

use std::time::Duration;

use ractor::RpcReplyPort;

use super::problem::Problem;
use crate::supervision::WorkerPool;
use crate::work::CallError;

/// Queues a job for the store workers (the least busy takes it) and waits for its answer
/// up to `timeout`.
pub async fn call_worker<J, T>(
    workers: &WorkerPool<J>,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<T>) -> J,
) -> Result<T, Problem>
where
    J: Send + 'static,
    T: Send + 'static,
{
    workers
        .queue()
        .call(build, timeout)
        .await
        .map_err(|e| match e {
            CallError::Full => Problem::unavailable("the store is saturated; retry shortly"),
            CallError::Timeout => Problem::unavailable("the store did not answer in time"),
            CallError::WorkerStopped => {
                Problem::unavailable("the store worker stopped while serving the request")
            }
        })
}

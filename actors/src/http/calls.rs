//! Calling an actor from a request handler: a busy, restarting or slow actor becomes a 503
//! with `Retry-After`, never a hang or a 500.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use super::problem::Problem;
use crate::supervision::WorkerPool;

/// Sends a request to the next store worker and waits for its answer up to `timeout`.
pub async fn call_worker<M, T>(
    workers: &WorkerPool<M>,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, Problem>
where
    M: ractor::Message,
    T: Send + 'static,
{
    let worker: ActorRef<M> = workers
        .pick()
        .ok_or_else(|| Problem::unavailable("the store is restarting"))?;
    match worker.call(build, Some(timeout)).await {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(Problem::unavailable("the store did not answer in time")),
        Ok(CallResult::SenderError) | Err(_) => Err(Problem::unavailable(
            "the store worker stopped while serving the request",
        )),
    }
}

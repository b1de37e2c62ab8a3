//! A work queue that a pool of supervised workers pull from.
//!
//! Why not round-robin, and why not ractor's `factory`: pushing each job to "the next"
//! worker queues it behind a slow one while others idle, and the factory's queueing router
//! hands a worker one job at a time, so a worker can never see the jobs that wait beside
//! it. Here idle workers pull: the least busy worker always takes the next job, and a worker
//! takes *everything* that is waiting (up to a batch size) at once — which is what lets a
//! store worker commit many orders in one transaction (group commit).
//!
//! Jobs wait in the queue, not in a worker's mailbox, so a worker that crashes loses only
//! the batch it held (whose callers get an error); the rest is pulled by the others and by
//! its restarted self.

use std::sync::Arc;
use std::time::Duration;

use ractor::RpcReplyPort;
use tokio::sync::{Mutex, mpsc, oneshot};

/// Why a call through the queue got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("too much work is waiting")]
    Full,
    #[error("no answer in time")]
    Timeout,
    #[error("the worker stopped before answering")]
    WorkerStopped,
}

/// The shared queue. Cloning gives another handle on the same queue.
pub struct WorkQueue<M> {
    tx: mpsc::Sender<M>,
    rx: Arc<Mutex<mpsc::Receiver<M>>>,
}

impl<M> Clone for WorkQueue<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            rx: self.rx.clone(),
        }
    }
}

impl<M: Send + 'static> WorkQueue<M> {
    /// A queue holding at most `capacity` waiting jobs; beyond that callers are refused at
    /// once (the HTTP answer is a 503) instead of queueing without bound.
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Self {
            tx,
            rx: Arc::new(Mutex::new(rx)),
        }
    }

    /// Enqueues a job without waiting.
    pub fn submit(&self, job: M) -> Result<(), CallError> {
        self.tx.try_send(job).map_err(|_| CallError::Full)
    }

    /// Enqueues the job `build` makes around a reply port and waits up to `timeout` for
    /// the answer.
    pub async fn call<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<T>) -> M,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let (reply, answer) = oneshot::channel();
        self.submit(build(reply.into()))?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(CallError::WorkerStopped),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// Takes up to `max` waiting jobs into `batch`, waiting at most `wait` for the first
    /// one. Returns how many were taken (0: nothing came; the worker can look at its
    /// mailbox, e.g. for a stop, and pull again).
    pub async fn take(&self, batch: &mut Vec<M>, max: usize, wait: Duration) -> usize {
        let Ok(mut rx) = tokio::time::timeout(wait, self.rx.lock()).await else {
            return 0;
        };
        tokio::time::timeout(wait, rx.recv_many(batch, max.max(1)))
            .await
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_takes_everything_waiting_and_callers_get_answers() {
        let queue = WorkQueue::<(u32, RpcReplyPort<u32>)>::new(16);
        let callers: Vec<_> = (0..5)
            .map(|n| {
                let q = queue.clone();
                tokio::spawn(async move { q.call(|r| (n, r), Duration::from_secs(5)).await })
            })
            .collect();
        // Let every caller enqueue before the worker pulls.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut batch = Vec::new();
        assert_eq!(queue.take(&mut batch, 64, Duration::from_secs(1)).await, 5);
        for (n, reply) in batch {
            reply.send(n * 10).expect("caller waits");
        }
        let mut answers = Vec::new();
        for c in callers {
            answers.push(c.await.expect("joined").expect("answered"));
        }
        answers.sort();
        assert_eq!(answers, vec![0, 10, 20, 30, 40]);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_dropped_job_is_an_error_not_a_hang() {
        let queue = WorkQueue::<RpcReplyPort<u32>>::new(1);
        queue
            .submit(oneshot::channel().0.into())
            .expect("room for one");
        assert_eq!(
            queue.call(|r| r, Duration::from_secs(1)).await,
            Err(CallError::Full)
        );
        let mut batch = Vec::new();
        queue.take(&mut batch, 8, Duration::from_secs(1)).await;
        let q = queue.clone();
        let caller = tokio::spawn(async move { q.call(|r| r, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        batch.clear();
        queue.take(&mut batch, 8, Duration::from_secs(1)).await;
        drop(batch); // the worker died holding it
        assert_eq!(caller.await.expect("joined"), Err(CallError::WorkerStopped));
        assert_eq!(
            queue
                .take(&mut Vec::new(), 8, Duration::from_millis(10))
                .await,
            0
        );
    }
}

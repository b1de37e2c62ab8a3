//! Consumed batches that a store worker pulls together, applied in one transaction.
//!
//! A consumer's lanes each send their batch to the node's store workers; a worker that finds
//! several waiting would otherwise commit them one after another. Merged, they cost one
//! statement and one commit. This is safe for the order of events: lanes never hold the
//! same order at once, so the merged batch keeps each order's events in delivery order.
//!
//! A batch of one event stays alone. The consumer retries the events of a failed batch one
//! by one, and such a retry must not share a transaction with anything else: merged with a
//! poison event, a healthy one would fail again and again and be dead-lettered with it.
//! A merged batch that fails fails for each of its batches, which then retry their events
//! alone, as after any failed batch; nothing of it was committed.

use std::future::Future;

use ractor::RpcReplyPort;

use super::consumer::{HandleError, Incoming, Outcome};

/// The answer a consumer's lane waits for: one outcome per event, in order.
pub type BatchReply = RpcReplyPort<Result<Vec<Outcome>, HandleError>>;

/// A lane's batch and where its answer goes.
pub type LaneBatch = (Vec<Incoming>, BatchReply);

/// Who gets which share of a merged batch's outcomes.
struct Merged {
    shares: Vec<(usize, BatchReply)>,
}

/// Merges every batch of several events into one (in the order given); batches of one
/// event come back untouched, to be applied alone.
fn merge(batches: Vec<LaneBatch>) -> (Vec<Incoming>, Merged, Vec<LaneBatch>) {
    let mut events = Vec::new();
    let mut shares = Vec::new();
    let mut alone = Vec::new();
    for (batch, reply) in batches {
        if batch.len() < 2 {
            alone.push((batch, reply));
        } else {
            shares.push((batch.len(), reply));
            events.extend(batch);
        }
    }
    (events, Merged { shares }, alone)
}

/// Applies the lanes' batches a worker took: the merged ones in one call of `apply`, each
/// single event in a call of its own; every lane gets its answer.
pub async fn apply_all<F, Fut>(batches: Vec<LaneBatch>, apply: F)
where
    F: Fn(Vec<Incoming>) -> Fut,
    Fut: Future<Output = Result<Vec<Outcome>, HandleError>>,
{
    let (events, merged, alone) = merge(batches);
    if !events.is_empty() {
        merged.answer(apply(events).await);
    }
    for (batch, reply) in alone {
        let _ = reply.send(apply(batch).await);
    }
}

impl Merged {
    /// Answers each batch with its own outcomes, or with the error of the whole.
    fn answer(self, result: Result<Vec<Outcome>, HandleError>) {
        match result {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (size, reply) in self.shares {
                    let share: Vec<Outcome> = outcomes.by_ref().take(size).collect();
                    let _ = reply.send(if share.len() == size {
                        Ok(share)
                    } else {
                        Err(HandleError::Failed(format!(
                            "the store answered {} outcomes for {size} events",
                            share.len()
                        )))
                    });
                }
            }
            Err(e) => {
                for (_, reply) in self.shares {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::amqp::Delivered;
    use crate::outbox::Causation;

    fn incoming(n: usize) -> Vec<Incoming> {
        (0..n)
            .map(|_| Incoming {
                event: contracts::Event::OrderCanceled(contracts::OrderCanceled {
                    event_id: uuid::Uuid::now_v7(),
                    order_id: uuid::Uuid::now_v7(),
                    canceled_at: chrono::Utc::now(),
                    reason: None,
                }),
                delivered: Delivered {
                    cause: Causation::default(),
                    redelivered: false,
                    span: tracing::Span::none(),
                },
            })
            .collect()
    }

    type Answer = oneshot::Receiver<Result<Vec<Outcome>, HandleError>>;

    fn batch(n: usize) -> (LaneBatch, Answer) {
        let (tx, rx) = oneshot::channel();
        ((incoming(n), tx.into()), rx)
    }

    async fn answer_of(rx: Answer) -> Result<Vec<Outcome>, HandleError> {
        tokio::time::timeout(Duration::from_secs(1), rx)
            .await
            .expect("answered in time")
            .expect("answered")
    }

    #[tokio::test]
    async fn each_batch_gets_its_own_outcomes_and_a_single_event_stays_alone() {
        let (a, a_rx) = batch(2);
        let (single, _single_rx) = batch(1);
        let (b, b_rx) = batch(3);
        let ids: Vec<_> = a.0.iter().chain(&b.0).map(|i| i.event.event_id()).collect();
        let (events, merged, alone) = merge(vec![a, single, b]);
        assert_eq!(
            events
                .iter()
                .map(|i| i.event.event_id())
                .collect::<Vec<_>>(),
            ids,
            "merged in the order given"
        );
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].0.len(), 1);
        let outcomes = vec![
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::Invalid("b0".into()),
            Outcome::Applied,
            Outcome::Duplicate,
        ];
        merged.answer(Ok(outcomes));
        assert_eq!(
            answer_of(a_rx).await.expect("ok"),
            vec![Outcome::Applied, Outcome::Duplicate]
        );
        assert_eq!(
            answer_of(b_rx).await.expect("ok"),
            vec![
                Outcome::Invalid("b0".into()),
                Outcome::Applied,
                Outcome::Duplicate
            ]
        );
    }

    #[tokio::test]
    async fn a_failure_or_a_short_answer_fails_every_batch_it_covers() {
        let (a, a_rx) = batch(2);
        let (b, b_rx) = batch(2);
        let (_, merged, _) = merge(vec![a, b]);
        merged.answer(Err(HandleError::Unavailable("db down".into())));
        for rx in [a_rx, b_rx] {
            assert!(matches!(
                answer_of(rx).await,
                Err(HandleError::Unavailable(reason)) if reason == "db down"
            ));
        }

        let (a, a_rx) = batch(2);
        let (b, b_rx) = batch(2);
        let (_, merged, _) = merge(vec![a, b]);
        merged.answer(Ok(vec![Outcome::Applied; 3]));
        assert!(answer_of(a_rx).await.is_ok());
        assert!(matches!(answer_of(b_rx).await, Err(HandleError::Failed(_))));
    }
}

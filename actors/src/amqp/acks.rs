//! The acknowledgements of one consumer channel, sent as few `basic.ack` frames as the
//! broker allows.
//!
//! Each `basic.ack` on a quorum queue becomes a settle command in the queue's Raft log. One
//! frame with `multiple = true` settles every delivery up to its tag at once, but only a tag
//! below which nothing is still being handled may be used that way: the lanes of a consumer
//! finish out of delivery order, and a multiple-ack over a delivery another lane still holds
//! would acknowledge it before its commit. So this task keeps the window of the channel:
//!
//! - `Hold(tag)`, sent by the stream as each delivery arrives (before any lane sees it);
//! - `Done(tag)`, sent by a lane once the delivery's transaction committed;
//! - `Released(tag)`, sent by a lane after it settled a delivery with a frame of its own
//!   (a dead letter's ack or reject, a requeue on shutdown).
//!
//! After each burst of messages it acknowledges, in one frame, every done delivery below the
//! lowest one still held; the tag of that frame is always a done one, never one settled
//! before (the broker closes the channel on an unknown tag). Done deliveries above a held
//! one wait — unless the hold lasts (a delivery retried with backoff), when after
//! [`STALE_AFTER`] each is acknowledged alone, so a slow delivery cannot stall the rest
//! behind the prefetch limit. Frames leave in the order this one task sends them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lapin::Acker;
use lapin::options::BasicAckOptions;
use tokio::sync::mpsc;

/// How long a committed delivery may wait behind one that is still held.
pub const STALE_AFTER: Duration = Duration::from_millis(100);

enum AckMsg<A = Acker> {
    Hold(u64),
    Done(u64, A),
    Released(u64),
}

/// The lanes' and the stream's handle on the window.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<AckMsg>,
}

impl Acks {
    /// Starts the window's task; it ends, acknowledging what it can, when every handle is
    /// dropped.
    pub fn start(queue: &'static str) -> (Acks, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Acks { tx }, tokio::spawn(run(queue, rx)))
    }

    /// A delivery arrived: nothing at or above it may be multiple-acked until it is settled.
    pub fn hold(&self, tag: u64) {
        let _ = self.tx.send(AckMsg::Hold(tag));
    }

    /// The delivery's effects are committed: acknowledge it.
    pub fn done(&self, tag: u64, acker: Acker) {
        let _ = self.tx.send(AckMsg::Done(tag, acker));
    }

    /// The delivery was settled by a frame of its own, already sent.
    pub fn released(&self, tag: u64) {
        let _ = self.tx.send(AckMsg::Released(tag));
    }
}

/// The window's bookkeeping, apart from the frames (`A` is the acker).
struct Window<A> {
    held: BTreeSet<u64>,
    done: BTreeMap<u64, (A, Instant)>,
}

impl<A> Default for Window<A> {
    fn default() -> Self {
        Self {
            held: BTreeSet::new(),
            done: BTreeMap::new(),
        }
    }
}

impl<A> Window<A> {
    fn apply(&mut self, msg: AckMsg<A>) {
        match msg {
            AckMsg::Hold(tag) => {
                self.held.insert(tag);
            }
            AckMsg::Done(tag, acker) => {
                self.held.remove(&tag);
                self.done.insert(tag, (acker, Instant::now()));
            }
            AckMsg::Released(tag) => {
                self.held.remove(&tag);
            }
        }
    }

    /// The done delivery with the highest tag below every held one, taken out with every
    /// done delivery below it: one multiple-ack covers them all.
    fn take_contiguous(&mut self) -> Option<(u64, A)> {
        let limit = self.held.first().copied().unwrap_or(u64::MAX);
        let highest = *self.done.range(..limit).next_back()?.0;
        let rest = self.done.split_off(&(highest + 1));
        let below = std::mem::replace(&mut self.done, rest);
        below
            .into_iter()
            .next_back()
            .map(|(tag, (acker, _))| (tag, acker))
    }

    /// Done deliveries that have waited longer than `after` behind a held one.
    fn take_stale(&mut self, after: Duration) -> Vec<(u64, A)> {
        let stale: Vec<u64> = self
            .done
            .iter()
            .filter(|(_, (_, since))| since.elapsed() >= after)
            .map(|(tag, _)| *tag)
            .collect();
        stale
            .into_iter()
            .filter_map(|tag| self.done.remove(&tag).map(|(acker, _)| (tag, acker)))
            .collect()
    }
}

async fn run(queue: &'static str, mut rx: mpsc::UnboundedReceiver<AckMsg>) {
    let mut window = Window::<Acker>::default();
    let mut burst = Vec::new();
    let mut tick = tokio::time::interval(STALE_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            taken = rx.recv_many(&mut burst, 1024) => {
                if taken == 0 {
                    break;
                }
                for msg in burst.drain(..) {
                    window.apply(msg);
                }
                if let Some((_, acker)) = window.take_contiguous() {
                    send(queue, &acker, true).await;
                }
            }
            _ = tick.tick(), if !window.done.is_empty() => {
                for (_, acker) in window.take_stale(STALE_AFTER) {
                    send(queue, &acker, false).await;
                }
            }
        }
    }
    // Every handle is gone (the stream ended and its lanes finished): what is done is
    // committed and is acknowledged now; what is still held is redelivered by the broker
    // once the channel closes.
    if let Some((_, acker)) = window.take_contiguous() {
        send(queue, &acker, true).await;
    }
    for (_, acker) in window.take_stale(Duration::ZERO) {
        send(queue, &acker, false).await;
    }
}

async fn send(queue: &str, acker: &Acker, multiple: bool) {
    if let Err(e) = acker.ack(BasicAckOptions { multiple }).await {
        // The channel died after the commit: the broker redelivers, the inbox dedups.
        tracing::warn!(queue, error = %e, "ack failed after commit; expecting a redelivery");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(held: &[u64], done: &[u64]) -> Window<()> {
        let mut w = Window::default();
        for tag in held.iter().chain(done) {
            w.apply(AckMsg::Hold(*tag));
        }
        for tag in done {
            w.apply(AckMsg::Done(*tag, ()));
        }
        w
    }

    fn tag(taken: Option<(u64, ())>) -> Option<u64> {
        taken.map(|(tag, _)| tag)
    }

    #[test]
    fn a_multiple_ack_never_reaches_a_held_delivery() {
        let mut w = window(&[3], &[1, 2, 4, 5]);
        assert_eq!(tag(w.take_contiguous()), Some(2), "1 and 2 can go");
        assert_eq!(w.done.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(tag(w.take_contiguous()), None, "4 and 5 wait behind 3");
        w.apply(AckMsg::Released(3));
        assert_eq!(tag(w.take_contiguous()), Some(5));
        assert!(w.done.is_empty());
    }

    #[test]
    fn a_released_tag_is_never_the_multiple_acks_tag() {
        // 4 was dead-lettered with its own frame: the multiple-ack covers 3 and 5, by 5.
        let mut w = window(&[4], &[3, 5]);
        w.apply(AckMsg::Released(4));
        assert_eq!(tag(w.take_contiguous()), Some(5));
        let mut w = window(&[4, 6], &[3, 5]);
        w.apply(AckMsg::Released(4));
        assert_eq!(tag(w.take_contiguous()), Some(5));
        assert!(w.held.contains(&6));
    }

    #[test]
    fn deliveries_stuck_behind_a_held_one_go_alone_once_stale() {
        let mut w = window(&[1], &[2, 3]);
        assert_eq!(tag(w.take_contiguous()), None);
        assert!(w.take_stale(Duration::from_secs(60)).is_empty());
        let alone: Vec<u64> = w
            .take_stale(Duration::ZERO)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(alone, vec![2, 3]);
        // 2 and 3 are acknowledged already: the next multiple-ack is by 4, never by them.
        w.apply(AckMsg::Hold(4));
        w.apply(AckMsg::Done(4, ()));
        w.apply(AckMsg::Released(1));
        assert_eq!(tag(w.take_contiguous()), Some(4));
    }

    /// Against the real broker: a multiple-ack that reached a held delivery would settle it,
    /// and an ack by a tag settled before would close the channel (and every delivery would
    /// come back). Only the held one may come back.
    #[tokio::test]
    async fn against_the_broker_only_the_held_delivery_comes_back() {
        use futures_util::StreamExt;
        use lapin::options::{
            BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
        };
        use lapin::types::FieldTable;
        use lapin::{BasicProperties, Connection, ConnectionProperties};

        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ is needed for this test");
        // Server-named, exclusive: this test's own, gone with its connection.
        let publisher = conn.create_channel().await.expect("channel");
        let queue = publisher
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue")
            .name()
            .as_str()
            .to_owned();
        for n in 1..=5 {
            publisher
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    n.to_string().as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
        }
        let consuming = conn.create_channel().await.expect("channel");
        consuming
            .basic_qos(10, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = consuming
            .basic_consume(
                queue.as_str().into(),
                "acks-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let (acks, task) = Acks::start("acks-test");
        let mut held = Vec::new();
        for _ in 1..=5 {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("delivered in time")
                .expect("a delivery")
                .expect("not an error");
            acks.hold(delivery.delivery_tag);
            held.push(delivery);
        }
        for delivery in &held {
            if delivery.data != b"3" {
                acks.done(delivery.delivery_tag, delivery.acker.clone());
            }
        }
        // 1 and 2 go by one multiple-ack; 4 and 5 wait behind 3, then go alone once stale.
        tokio::time::sleep(STALE_AFTER * 3).await;
        drop(acks);
        task.await.expect("the window task ends");
        assert!(
            consuming.status().connected(),
            "the broker accepted every ack frame"
        );
        consuming
            .close(200, "test done".into())
            .await
            .expect("close");
        let counted = conn.create_channel().await.expect("channel");
        let back = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let got = counted
                    .basic_get(queue.as_str().into(), Default::default())
                    .await
                    .expect("get");
                if let Some(message) = got {
                    return message;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the held delivery is back");
        assert_eq!(back.delivery.data, b"3");
        // Give the broker time to requeue anything else a wrong ack had left unsettled.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rest = counted
            .basic_get(queue.as_str().into(), Default::default())
            .await
            .expect("get");
        assert!(rest.is_none(), "only the held delivery came back");
        let _ = conn.close(200, "test done".into()).await;
    }
}

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
//! Committed deliveries gather for up to [`GATHER_FOR`] (or until half the prefetch window
//! is done, so the broker keeps credit to deliver more), then one frame acknowledges every
//! done delivery below the lowest one still held; the tag of that frame is always a done
//! one, never one settled before (the broker closes the channel on an unknown tag). Done
//! deliveries above a held one wait — unless the hold lasts (a delivery retried with
//! backoff), when after [`STALE_AFTER`] each is acknowledged alone, so a slow delivery
//! cannot stall the rest behind the prefetch limit. Frames leave in the order this one task
//! sends them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lapin::Acker;
use lapin::options::BasicAckOptions;
use tokio::sync::mpsc;
use tokio::time::sleep_until;

/// How long a committed delivery may wait behind one that is still held.
pub const STALE_AFTER: Duration = Duration::from_millis(100);

/// How long committed deliveries gather before one frame acknowledges them. Each frame is a
/// settle command in the quorum queue's Raft log: acknowledging after every committed batch
/// instead, RabbitMQ spent 6–17% more CPU per order at a steady 2,500 orders/s, and a burst
/// with both nodes took 10–15% fewer orders a second (docs/performance.md). Nothing waits
/// for an acknowledgement but the broker's prefetch credit (see [`Acks::start`]); a crash
/// in the meantime redelivers those deliveries, and the inbox drops them.
pub const GATHER_FOR: Duration = Duration::from_millis(20);

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
    /// Starts the window's task for a channel with `prefetch` unacknowledged deliveries at
    /// most; it ends, acknowledging what it can, when every handle is dropped. Once half of
    /// `prefetch` is done it acknowledges at once rather than gathering longer, so the
    /// broker keeps credit to deliver more meanwhile.
    pub fn start(queue: &'static str, prefetch: u16) -> (Acks, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Frames { queue };
        let flush_at = usize::from(prefetch / 2).max(1);
        (Acks { tx }, tokio::spawn(run(rx, flush_at, sink)))
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

/// Where the window's frames go: the channel's `basic.ack`, or a test's record.
trait AckSink<A> {
    async fn ack(&self, acker: A, multiple: bool);
}

/// The channel's frames.
struct Frames {
    queue: &'static str,
}

impl AckSink<Acker> for Frames {
    async fn ack(&self, acker: Acker, multiple: bool) {
        if let Err(e) = acker.ack(BasicAckOptions { multiple }).await {
            // The channel died after the commit: the broker redelivers, the inbox dedups.
            tracing::warn!(
                queue = self.queue,
                error = %e,
                "ack failed after commit; expecting a redelivery"
            );
        }
    }
}

async fn run<A>(
    mut rx: mpsc::UnboundedReceiver<AckMsg<A>>,
    flush_at: usize,
    sink: impl AckSink<A>,
) {
    let mut window = Window::<A>::default();
    let mut burst = Vec::new();
    let mut tick = tokio::time::interval(STALE_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the done deliveries gathering now are acknowledged.
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            taken = rx.recv_many(&mut burst, 1024) => {
                if taken == 0 {
                    break;
                }
                for msg in burst.drain(..) {
                    window.apply(msg);
                }
                if window.done.len() >= flush_at {
                    due = None;
                    ack_contiguous(&mut window, &sink).await;
                } else if due.is_none() && !window.done.is_empty() {
                    due = Some(tokio::time::Instant::now() + GATHER_FOR);
                }
            }
            _ = sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                due = None;
                ack_contiguous(&mut window, &sink).await;
            }
            _ = tick.tick(), if !window.done.is_empty() => {
                for (_, acker) in window.take_stale(STALE_AFTER) {
                    sink.ack(acker, false).await;
                }
            }
        }
    }
    // Every handle is gone (the stream ended and its lanes finished): what is done is
    // committed and is acknowledged now; what is still held is redelivered by the broker
    // once the channel closes.
    ack_contiguous(&mut window, &sink).await;
    for (_, acker) in window.take_stale(Duration::ZERO) {
        sink.ack(acker, false).await;
    }
}

async fn ack_contiguous<A>(window: &mut Window<A>, sink: &impl AckSink<A>) {
    if let Some((_, acker)) = window.take_contiguous() {
        sink.ack(acker, true).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

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

    /// The frames a window sent: (tag, multiple, when).
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<(u64, bool, tokio::time::Instant)>>>);

    impl AckSink<u64> for Recorded {
        async fn ack(&self, tag: u64, multiple: bool) {
            let mut frames = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            frames.push((tag, multiple, tokio::time::Instant::now()));
        }
    }

    impl Recorded {
        fn frames(&self) -> Vec<(u64, bool, tokio::time::Instant)> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        /// Each frame's tag and whether it was a multiple-ack.
        fn tags(frames: &[(u64, bool, tokio::time::Instant)]) -> Vec<(u64, bool)> {
            frames
                .iter()
                .map(|(tag, multiple, _)| (*tag, *multiple))
                .collect()
        }
    }

    /// A window task over tags (the tag stands for its acker), and its record of frames.
    fn spawn_window(
        flush_at: usize,
    ) -> (
        mpsc::UnboundedSender<AckMsg<u64>>,
        Recorded,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let recorded = Recorded::default();
        let task = tokio::spawn(run(rx, flush_at, recorded.clone()));
        (tx, recorded, task)
    }

    #[tokio::test(start_paused = true)]
    async fn deliveries_committed_close_together_go_in_one_frame() {
        let (tx, recorded, task) = spawn_window(128);
        let start = tokio::time::Instant::now();
        for tag in 1..=3 {
            tx.send(AckMsg::Hold(tag)).expect("window runs");
        }
        for tag in 1..=3 {
            tx.send(AckMsg::Done(tag, tag)).expect("window runs");
            tokio::time::sleep(GATHER_FOR / 4).await;
        }
        assert!(
            recorded.frames().is_empty(),
            "nothing is sent before the first done delivery has gathered for GATHER_FOR"
        );
        tokio::time::sleep(GATHER_FOR).await;
        let frames = recorded.frames();
        assert_eq!(
            Recorded::tags(&frames),
            vec![(3, true)],
            "one multiple-ack by the last tag settles all three"
        );
        assert_eq!(
            frames[0].2 - start,
            GATHER_FOR,
            "sent once the first had gathered"
        );
        drop(tx);
        task.await.expect("the window task ends");
        assert_eq!(recorded.frames().len(), 1, "nothing is acknowledged twice");
    }

    #[tokio::test(start_paused = true)]
    async fn half_the_prefetch_done_is_acknowledged_at_once() {
        let (tx, recorded, task) = spawn_window(2);
        let start = tokio::time::Instant::now();
        for tag in 1..=3 {
            tx.send(AckMsg::Hold(tag)).expect("window runs");
        }
        tx.send(AckMsg::Done(1, 1)).expect("window runs");
        tx.send(AckMsg::Done(2, 2)).expect("window runs");
        tokio::time::sleep(GATHER_FOR / 10).await;
        let frames = recorded.frames();
        assert_eq!(
            Recorded::tags(&frames),
            vec![(2, true)],
            "two done of a prefetch of four: acknowledged without gathering"
        );
        assert!(frames[0].2 - start < GATHER_FOR);
        // The third, alone below the threshold, gathers as usual; the end of the window
        // acknowledges what is done.
        tx.send(AckMsg::Done(3, 3)).expect("window runs");
        drop(tx);
        task.await.expect("the window task ends");
        let tags: Vec<u64> = recorded.frames().iter().map(|(tag, _, _)| *tag).collect();
        assert_eq!(tags, vec![2, 3]);
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
        let (acks, task) = Acks::start("acks-test", 10);
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

//! Hands a consumer's deliveries to its lanes: any idle lane takes what waits, except the
//! events of an order another lane is handling.
//!
//! Spreading deliveries over lanes by a hash of the order id kept one order's events in
//! order, but a delivery waited behind a busy lane while others idled: at 200 orders/s a
//! tenth of the invoices node's deliveries waited over 4 ms for their lane. Here an order
//! is tied to a lane only while that lane holds one of its events, so the order of one
//! order's events is kept (they are taken in delivery order, and never by two lanes at
//! once) and no delivery waits while a lane is free for it.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// The queue the lanes take from. Cloning gives another handle on the same queue.
pub struct Dispatch<K, T> {
    shared: Arc<Shared<K, T>>,
}

impl<K, T> Clone for Dispatch<K, T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<K, T> {
    state: Mutex<State<K, T>>,
    changed: Notify,
}

impl<K, T> Shared<K, T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<K, T>> {
        // The state stays consistent across a panic (every change is one push or remove).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct State<K, T> {
    waiting: VecDeque<(K, T)>,
    /// Keys whose items a lane holds now.
    busy: HashSet<K>,
    closed: bool,
}

/// What a lane took; its keys are free again when it is dropped.
pub struct Taken<K: Hash + Eq + Copy, T> {
    pub items: Vec<T>,
    keys: HashSet<K>,
    shared: Arc<Shared<K, T>>,
}

impl<K: Hash + Eq + Copy, T> Drop for Taken<K, T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        for key in &self.keys {
            state.busy.remove(key);
        }
        let more = !state.waiting.is_empty();
        drop(state);
        if more {
            // Items of these keys may be waiting: a waiting lane can take them now.
            self.shared.changed.notify_one();
        }
    }
}

impl<K: Hash + Eq + Copy, T> Dispatch<K, T> {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    waiting: VecDeque::new(),
                    busy: HashSet::new(),
                    closed: false,
                }),
                changed: Notify::new(),
            }),
        }
    }

    pub fn push(&self, key: K, item: T) {
        self.shared.lock().waiting.push_back((key, item));
        self.shared.changed.notify_one();
    }

    /// No more items will come: lanes take what waits, then get `None`.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_waiters();
    }

    /// Takes up to `max` waiting items whose keys no other lane holds, in the order they
    /// came, waiting until there is one; `None` once closed and empty.
    pub async fn take(&self, max: usize) -> Option<Taken<K, T>> {
        loop {
            // Registered before looking, so a push or a release meanwhile is not missed.
            let changed = self.shared.changed.notified();
            {
                let mut state = self.shared.lock();
                if let Some(taken) = self.take_from(&mut state, max.max(1)) {
                    return Some(taken);
                }
                if state.closed && state.waiting.is_empty() {
                    return None;
                }
            }
            changed.await;
        }
    }

    fn take_from(&self, state: &mut State<K, T>, max: usize) -> Option<Taken<K, T>> {
        let mut items = Vec::new();
        let mut keys: HashSet<K> = HashSet::new();
        // A key passed over stays passed over for the rest of this scan, so a later item
        // of it never goes before an earlier one.
        let mut passed: HashSet<K> = HashSet::new();
        let mut rest = VecDeque::with_capacity(state.waiting.len());
        while let Some((key, item)) = state.waiting.pop_front() {
            let ours = keys.contains(&key);
            if items.len() < max && !passed.contains(&key) && (ours || !state.busy.contains(&key)) {
                keys.insert(key);
                items.push(item);
            } else {
                passed.insert(key);
                rest.push_back((key, item));
            }
        }
        state.waiting = rest;
        if items.is_empty() {
            return None;
        }
        state.busy.extend(keys.iter().copied());
        Some(Taken {
            items,
            keys,
            shared: self.shared.clone(),
        })
    }
}

impl<K: Hash + Eq + Copy, T> Default for Dispatch<K, T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_busy_key_waits_for_its_lane_while_other_keys_go_to_any_lane() {
        let d = Dispatch::<u8, &str>::new();
        d.push(1, "a1");
        let first = d.take(10).await.expect("an item");
        assert_eq!(first.items, vec!["a1"]);
        d.push(1, "a2");
        d.push(2, "b1");
        d.push(1, "a3");
        // Key 1 is held: another lane gets only key 2.
        let second = d.take(10).await.expect("an item");
        assert_eq!(second.items, vec!["b1"]);
        drop(first);
        // Released: the rest of key 1, in order.
        let third = d.take(10).await.expect("items");
        assert_eq!(third.items, vec!["a2", "a3"]);
    }

    #[tokio::test]
    async fn a_full_batch_never_lets_a_later_item_of_a_key_pass_an_earlier_one() {
        let d = Dispatch::<u8, &str>::new();
        for (k, v) in [(1, "a1"), (2, "b1"), (1, "a2"), (3, "c1")] {
            d.push(k, v);
        }
        let first = d.take(2).await.expect("items");
        assert_eq!(first.items, vec!["a1", "b1"]);
        // a2 waits for key 1; c1 goes to another lane.
        let second = d.take(10).await.expect("items");
        assert_eq!(second.items, vec!["c1"]);
        drop(first);
        assert_eq!(d.take(10).await.expect("items").items, vec!["a2"]);
    }

    #[tokio::test]
    async fn a_waiting_lane_wakes_for_a_push_and_for_a_release_and_ends_when_closed() {
        let d = Dispatch::<u8, &str>::new();
        let lane = |d: &Dispatch<u8, &'static str>| {
            let d = d.clone();
            tokio::spawn(async move { d.take(10).await.map(|t| t.items.clone()) })
        };
        let waiting = lane(&d);
        tokio::time::sleep(Duration::from_millis(20)).await;
        d.push(1, "a1");
        assert_eq!(waiting.await.expect("joined"), Some(vec!["a1"]));

        d.push(2, "b1");
        let held = d.take(10).await.expect("an item");
        let mut waiting = lane(&d);
        d.push(2, "b2");
        let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(early.is_err(), "b2 was taken while another lane held key 2");
        drop(held);
        assert_eq!(waiting.await.expect("joined"), Some(vec!["b2"]));

        let waiting = lane(&d);
        tokio::time::sleep(Duration::from_millis(20)).await;
        d.close();
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(ended.expect("ends once closed").expect("joined"), None);
    }
}

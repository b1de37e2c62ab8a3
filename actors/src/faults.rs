//! Fault injection for resilience drills: makes a chosen actor of the node's tree panic, so
//! that a drill can watch its supervisor restart it while the node keeps serving.
//!
//! Only wired in when the node runs with `FAULT_INJECTION=on`; otherwise the HTTP route
//! does not exist (404). The panic happens inside the actor's own message handler, exactly
//! like a bug would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use ractor::ActorId;

use crate::supervision::ChildHandle;

/// The actors of every node a drill may crash, by their names in the tree.
pub const ACTORS: [&str; 6] = [
    "store",
    "amqp-publish",
    "amqp-consume",
    "outbox-relay",
    "consumer",
    "http-intake",
];

/// Makes one actor panic; `false` when it is not running (restarting, or stopped) or was
/// told to panic already.
pub type Trigger = Arc<dyn Fn() -> bool + Send + Sync>;

/// Tells an actor to panic at most once per incarnation. A second `Panic` sent before the
/// first took effect would wait in the mailbox of an actor about to die and be lost with
/// it, so the caller would hear of a fault that never happens. Its restarted successor has
/// another id and can be told again.
#[derive(Default)]
pub struct PanicOnce(Mutex<Option<ActorId>>);

impl PanicOnce {
    /// Sends `panic` to the actor behind `handle`; `false` when none runs or this one was
    /// told already.
    pub fn send<M: ractor::Message>(&self, handle: &ChildHandle<M>, panic: M) -> bool {
        let Some(actor) = handle.get() else {
            return false;
        };
        let mut told = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if *told == Some(actor.get_id()) {
            return false;
        }
        let sent = actor.cast(panic).is_ok();
        if sent {
            *told = Some(actor.get_id());
        }
        sent
    }
}

/// The actors a drill may crash, by the name they have in the tree (`store` picks one of
/// the store workers, a different one each time).
#[derive(Clone, Default)]
pub struct FaultInjector {
    triggers: BTreeMap<&'static str, Trigger>,
}

/// What became of a request to crash an actor.
#[derive(Debug, PartialEq, Eq)]
pub enum Injected {
    Panicked,
    NotRunning,
    UnknownActor,
}

impl FaultInjector {
    pub fn with(mut self, actor: &'static str, trigger: Trigger) -> Self {
        self.triggers.insert(actor, trigger);
        self
    }

    /// The actors that can be crashed.
    pub fn actors(&self) -> Vec<&'static str> {
        self.triggers.keys().copied().collect()
    }

    pub fn panic(&self, actor: &str) -> Injected {
        match self.triggers.get(actor) {
            None => Injected::UnknownActor,
            Some(trigger) if trigger() => Injected::Panicked,
            Some(_) => Injected::NotRunning,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_outcome_of_each_request() {
        let faults = FaultInjector::default()
            .with("relay", Arc::new(|| true))
            .with("consumer", Arc::new(|| false));
        assert_eq!(faults.panic("relay"), Injected::Panicked);
        assert_eq!(faults.panic("consumer"), Injected::NotRunning);
        assert_eq!(faults.panic("nope"), Injected::UnknownActor);
        assert_eq!(faults.actors(), vec!["consumer", "relay"]);
    }
}

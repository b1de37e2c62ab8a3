//! Fault injection for resilience drills: makes a chosen actor of the node's tree panic, so
//! that a drill can watch its supervisor restart it while the node keeps serving.
//!
//! Only wired in when the node runs with `FAULT_INJECTION=on`; otherwise the HTTP route
//! does not exist (404). The panic happens inside the actor's own message handler, exactly
//! like a bug would.

use std::collections::BTreeMap;
use std::sync::Arc;

/// The actors of every node a drill may crash, by their names in the tree.
pub const ACTORS: [&str; 6] = [
    "store",
    "amqp-publish",
    "amqp-consume",
    "outbox-relay",
    "consumer",
    "http-intake",
];

/// Makes one actor panic; `false` when it is not running (restarting, or stopped).
pub type Trigger = Arc<dyn Fn() -> bool + Send + Sync>;

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

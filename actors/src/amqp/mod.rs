//! RabbitMQ: the [`link`] actor owns the connection; [`consumer`] bridges deliveries into
//! actor messages (`dispatch` hands them to its lanes, and `acks` acknowledges them in as
//! few frames as it may); [`merge`] lets a store worker apply the batches of several lanes
//! in one transaction; [`topology`] declares the contract's exchanges and queues.

mod acks;
pub mod consumer;
mod dispatch;
pub mod link;
pub mod merge;
pub mod topology;

pub use consumer::{
    Consumer, ConsumerArgs, ConsumerMsg, Delivered, EventHandler, HandleError, Incoming, Outcome,
    ask_workers,
};
pub use link::{AmqpLink, BrokerState, LinkArgs, LinkError, LinkMsg, on_failure};

//! RabbitMQ: the [`link`] actor owns the connection; [`consumer`] bridges deliveries into
//! actor messages; [`topology`] declares the contract's exchanges and queues.

pub mod consumer;
pub mod link;
pub mod topology;

pub use consumer::{
    Consumer, ConsumerArgs, ConsumerMsg, Delivered, EventHandler, HandleError, Incoming, Outcome,
    ask_workers,
};
pub use link::{AmqpLink, BrokerState, LinkArgs, LinkError, LinkMsg};

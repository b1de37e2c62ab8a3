//! The v1 messaging contract between `orders-node` and `invoices-node`.
//!
//! - [`events`]: the five event types and the [`Event`] envelope that knows its routing key.
//! - [`topology`]: exchange, queue, routing-key and header names; nodes never spell them.
//! - [`codec`]: the MessagePack wire format (named maps, UUIDs and timestamps as strings).
//! - [`rules`]: what a valid order and invoice are, for the HTTP API and every consumer alike.
//! - [`timestamp`]: how events and the nodes' JSON answers write a timestamp.
//!
//! `messaging.md` in the design folder is the human-readable form of this crate; the golden
//! vectors in `codec`'s tests pin the exact bytes so a wire change cannot slip through CI.

pub mod codec;
pub mod events;
pub mod rules;
pub mod timestamp;
pub mod topology;

pub use codec::{DecodeError, MAX_MESSAGE_BYTES, decode, encode};
pub use events::{
    Event, InvoiceIssued, InvoicePaid, InvoiceVoided, LineItem, OrderCanceled, OrderCreated,
};

//! The MessagePack wire format: each event is a map keyed by field name, written in the
//! human-readable serde mode so that UUIDs and timestamps are strings another language
//! can read without knowing Rust's binary forms.

use serde::{Serialize, de::DeserializeOwned};

use crate::events::Event;
use crate::topology;

/// Bodies larger than this are rejected unread.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why a body could not become an [`Event`]. Every variant is a poison message: retrying
/// cannot help, so consumers dead-letter it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message body of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("invalid {event_type} body: {source}")]
    Invalid {
        event_type: &'static str,
        #[source]
        source: rmp_serde::decode::Error,
    },
}

/// Encodes an event body. Encoding our own types cannot fail; the `expect` guards that.
pub fn encode(event: &Event) -> Vec<u8> {
    match event {
        Event::OrderCreated(e) => encode_map(e),
        Event::OrderCanceled(e) => encode_map(e),
        Event::InvoiceIssued(e) => encode_map(e),
        Event::InvoicePaid(e) => encode_map(e),
        Event::InvoiceVoided(e) => encode_map(e),
    }
}

fn encode_map<T: Serialize>(value: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    let mut serializer = rmp_serde::Serializer::new(&mut buf)
        .with_struct_map()
        .with_human_readable();
    value
        .serialize(&mut serializer)
        .expect("contract events contain only strings, integers and lists");
    buf
}

/// Decodes a body whose event type (routing key or `type` property) is `event_type`.
pub fn decode(event_type: &str, body: &[u8]) -> Result<Event, DecodeError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(body.len()));
    }
    Ok(match event_type {
        topology::ORDER_CREATED => Event::OrderCreated(decode_map(topology::ORDER_CREATED, body)?),
        topology::ORDER_CANCELED => {
            Event::OrderCanceled(decode_map(topology::ORDER_CANCELED, body)?)
        }
        topology::INVOICE_ISSUED => {
            Event::InvoiceIssued(decode_map(topology::INVOICE_ISSUED, body)?)
        }
        topology::INVOICE_PAID => Event::InvoicePaid(decode_map(topology::INVOICE_PAID, body)?),
        topology::INVOICE_VOIDED => {
            Event::InvoiceVoided(decode_map(topology::INVOICE_VOIDED, body)?)
        }
        other => return Err(DecodeError::UnknownType(other.to_owned())),
    })
}

fn decode_map<T: DeserializeOwned>(
    event_type: &'static str,
    body: &[u8],
) -> Result<T, DecodeError> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(body).with_human_readable();
    T::deserialize(&mut deserializer).map_err(|source| DecodeError::Invalid { event_type, source })
}

#[cfg(test)]
mod tests;

//! The five version-1 events. Field names are the wire names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::topology;

/// One line of an order as it travels in `order.created`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// `order.created`: an order was accepted; invoices-node issues its invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub currency: String,
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
}

/// `order.canceled`: the order was canceled; an issued invoice becomes void.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCanceled {
    pub event_id: Uuid,
    pub order_id: Uuid,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub canceled_at: DateTime<Utc>,
    pub reason: Option<String>,
}

/// `invoice.issued`: the invoice of an order exists and is payable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceIssued {
    pub event_id: Uuid,
    pub invoice_id: Uuid,
    pub order_id: Uuid,
    pub number: String,
    pub currency: String,
    pub amount_cents: i64,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub issued_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub due_at: DateTime<Utc>,
}

/// `invoice.paid`: the invoice was paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoicePaid {
    pub event_id: Uuid,
    pub invoice_id: Uuid,
    pub order_id: Uuid,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub paid_at: DateTime<Utc>,
}

/// `invoice.voided`: the invoice was voided because its order was canceled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceVoided {
    pub event_id: Uuid,
    pub invoice_id: Uuid,
    pub order_id: Uuid,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub voided_at: DateTime<Utc>,
}

/// Any v1 event, tagged by its routing key (which travels outside the body, in the AMQP
/// routing key and `type` property).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    OrderCreated(OrderCreated),
    OrderCanceled(OrderCanceled),
    InvoiceIssued(InvoiceIssued),
    InvoicePaid(InvoicePaid),
    InvoiceVoided(InvoiceVoided),
}

impl Event {
    /// The routing key, which is also the AMQP `type` property.
    pub fn routing_key(&self) -> &'static str {
        match self {
            Event::OrderCreated(_) => topology::ORDER_CREATED,
            Event::OrderCanceled(_) => topology::ORDER_CANCELED,
            Event::InvoiceIssued(_) => topology::INVOICE_ISSUED,
            Event::InvoicePaid(_) => topology::INVOICE_PAID,
            Event::InvoiceVoided(_) => topology::INVOICE_VOIDED,
        }
    }

    /// The exchange this event is published to.
    pub fn exchange(&self) -> &'static str {
        match self {
            Event::OrderCreated(_) | Event::OrderCanceled(_) => topology::ORDERS_EXCHANGE,
            Event::InvoiceIssued(_) | Event::InvoicePaid(_) | Event::InvoiceVoided(_) => {
                topology::INVOICES_EXCHANGE
            }
        }
    }

    /// The event id, equal to the AMQP `message_id`.
    pub fn event_id(&self) -> Uuid {
        match self {
            Event::OrderCreated(e) => e.event_id,
            Event::OrderCanceled(e) => e.event_id,
            Event::InvoiceIssued(e) => e.event_id,
            Event::InvoicePaid(e) => e.event_id,
            Event::InvoiceVoided(e) => e.event_id,
        }
    }

    /// The order the event concerns; events of one order leave in the order written.
    pub fn order_id(&self) -> Uuid {
        match self {
            Event::OrderCreated(e) => e.order_id,
            Event::OrderCanceled(e) => e.order_id,
            Event::InvoiceIssued(e) => e.order_id,
            Event::InvoicePaid(e) => e.order_id,
            Event::InvoiceVoided(e) => e.order_id,
        }
    }
}

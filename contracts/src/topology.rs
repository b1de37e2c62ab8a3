//! Names of the RabbitMQ topology and message headers, version 1.

/// Exchange (topic, durable) that orders-node publishes to.
pub const ORDERS_EXCHANGE: &str = "orders.events";
/// Exchange (topic, durable) that invoices-node publishes to.
pub const INVOICES_EXCHANGE: &str = "invoices.events";

/// Queue (quorum, durable) from which invoices-node consumes `order.*`.
pub const INVOICES_NODE_QUEUE: &str = "invoices-node.orders-events";
/// Queue (quorum, durable) from which orders-node consumes `invoice.*`.
pub const ORDERS_NODE_QUEUE: &str = "orders-node.invoices-events";

/// Binding pattern of [`INVOICES_NODE_QUEUE`] on [`ORDERS_EXCHANGE`].
pub const ORDER_EVENTS_PATTERN: &str = "order.*";
/// Binding pattern of [`ORDERS_NODE_QUEUE`] on [`INVOICES_EXCHANGE`].
pub const INVOICE_EVENTS_PATTERN: &str = "invoice.*";

/// Routing keys; also the AMQP `type` property of each message.
pub const ORDER_CREATED: &str = "order.created";
pub const ORDER_CANCELED: &str = "order.canceled";
pub const INVOICE_ISSUED: &str = "invoice.issued";
pub const INVOICE_PAID: &str = "invoice.paid";
pub const INVOICE_VOIDED: &str = "invoice.voided";

/// `content_type` of every message body.
pub const CONTENT_TYPE: &str = "application/msgpack";
/// Header carrying the contract version (an integer).
pub const CONTRACT_VERSION_HEADER: &str = "contract-version";
/// The contract version of every event in [`crate::events`].
pub const CONTRACT_VERSION: i64 = 1;
/// W3C trace context headers.
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TRACESTATE_HEADER: &str = "tracestate";
/// The HTTP request id that caused the event, when there was one.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Headers a consumer adds to a message it dead-letters: why, and where it came from (the
/// broker's own `x-death` is added only when the broker dead-letters by itself).
pub const DEAD_LETTER_REASON_HEADER: &str = "x-dead-letter-reason";
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-original-exchange";
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-original-routing-key";

/// The dead-letter queue of a consumed queue: `<queue>.dlq`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// The dead-letter exchange of a consumed queue: `<queue>.dlx` (direct, durable).
pub fn dead_letter_exchange(queue: &str) -> String {
    format!("{queue}.dlx")
}

/// One consumed queue: what it is bound to and where it dead-letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumedQueue {
    pub queue: &'static str,
    pub exchange: &'static str,
    pub pattern: &'static str,
    /// The event types (routing keys) that arrive on it.
    pub routing_keys: &'static [&'static str],
}

/// The queue invoices-node consumes.
pub const INVOICES_NODE_INPUT: ConsumedQueue = ConsumedQueue {
    queue: INVOICES_NODE_QUEUE,
    exchange: ORDERS_EXCHANGE,
    pattern: ORDER_EVENTS_PATTERN,
    routing_keys: &[ORDER_CREATED, ORDER_CANCELED],
};

/// The queue orders-node consumes.
pub const ORDERS_NODE_INPUT: ConsumedQueue = ConsumedQueue {
    queue: ORDERS_NODE_QUEUE,
    exchange: INVOICES_EXCHANGE,
    pattern: INVOICE_EVENTS_PATTERN,
    routing_keys: &[INVOICE_ISSUED, INVOICE_PAID, INVOICE_VOIDED],
};

/// Both exchanges; every node declares both so that either can start first.
pub const EXCHANGES: [&str; 2] = [ORDERS_EXCHANGE, INVOICES_EXCHANGE];

//! The publish side of the transactional outbox: [`enqueue`] writes an event in the
//! caller's transaction; the [`crate::relay::OutboxRelay`] actor publishes it.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use contracts::Event;

/// What caused an event, carried into its AMQP headers so one trace and one request id
/// run from the HTTP request to the consumer on the other node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Causation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "x-request-id")]
    pub request_id: Option<String>,
}

/// Adds `event` to the outbox inside the caller's transaction: it will be published if and
/// only if that transaction commits.
pub async fn enqueue(
    conn: &mut PgConnection,
    event: &Event,
    cause: &Causation,
) -> Result<(), sqlx::Error> {
    enqueue_many(conn, &[(event.clone(), cause)]).await
}

/// Adds `events` to the outbox in one statement, in the order given (which is the order
/// the relay publishes one order's events in).
pub async fn enqueue_many(
    conn: &mut PgConnection,
    events: &[(Event, &Causation)],
) -> Result<(), sqlx::Error> {
    let n = events.len();
    let (mut ids, mut aggregates, mut exchanges, mut keys, mut payloads, mut headers) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (event, cause) in events {
        ids.push(event.event_id());
        aggregates.push(event.order_id());
        exchanges.push(event.exchange());
        keys.push(event.routing_key());
        payloads.push(contracts::encode(event));
        headers.push(serde_json::to_string(cause).unwrap_or_else(|_| "{}".into()));
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, payload, headers)
         SELECT event_id, aggregate_id, exchange, routing_key, payload, headers::jsonb
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::text[])
                WITH ORDINALITY AS t(event_id, aggregate_id, exchange, routing_key, payload, headers, n)
          ORDER BY n",
    )
    .bind(&ids)
    .bind(&aggregates)
    .bind(&exchanges)
    .bind(&keys)
    .bind(&payloads)
    .bind(&headers)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a consumed event id in the caller's transaction. `false` means it was
/// processed before: the caller must change nothing and acknowledge.
pub async fn first_delivery(
    conn: &mut PgConnection,
    event_id: uuid::Uuid,
    event_type: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO inbox (event_id, event_type) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(event_type)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Records consumed event ids in the caller's transaction, in one statement; returns the
/// ids seen for the first time (the others were processed before: change nothing for them).
pub async fn first_deliveries(
    conn: &mut PgConnection,
    event_ids: &[uuid::Uuid],
    event_types: &[&str],
) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "INSERT INTO inbox (event_id, event_type)
         SELECT * FROM unnest($1::uuid[], $2::text[])
         ON CONFLICT DO NOTHING
         RETURNING event_id",
    )
    .bind(event_ids)
    .bind(event_types)
    .fetch_all(conn)
    .await
}

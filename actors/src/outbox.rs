//! The publish side of the transactional outbox: [`enqueue`] writes an event in the
//! caller's transaction; the [`crate::relay::OutboxRelay`] actor publishes it.
//!
//! Most rows wait for a relay pass to select them. The first event of a new order can leave
//! sooner: written with a lease ([`OutboxRows::leased`]), it is handed to the relay as
//! [`Outgoing`] right after the commit and published without being selected (see
//! [`crate::relay::OutboxNotifier::publish`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
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

/// The longest `tracestate` carried on (W3C allows 32 members of at most 256 characters,
/// but recommends propagating at least 512 and truncating beyond).
const MAX_TRACESTATE: usize = 512;
/// The longest request id carried on.
pub const MAX_REQUEST_ID: usize = 200;

impl Causation {
    /// Only what is safe to carry from input (an HTTP header, an AMQP header) into an outbox
    /// row and on into AMQP headers: a W3C `traceparent`, a `tracestate` of printable ASCII
    /// of at most 512 characters, a request id of 1 to 200 visible ASCII characters.
    /// Anything else is dropped — a decorative header must never decide whether an event
    /// takes effect (a NUL byte failed the database write; a 128 KB value made the broker
    /// close the publisher's connection).
    pub fn sanitized(self) -> Causation {
        let traceparent = self.traceparent.filter(|tp| is_traceparent(tp));
        Causation {
            // A tracestate means nothing without its traceparent.
            tracestate: self
                .tracestate
                .filter(|ts| traceparent.is_some() && is_tracestate(ts)),
            traceparent,
            request_id: self.request_id.filter(|id| is_request_id(id)),
        }
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lower case, ids not all zero (W3C Trace Context).
pub fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    matches!(parts.as_slice(), [v, trace, parent, flags]
        if *v == "00" && hex(trace, 32) && hex(parent, 16) && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0'))
}

fn is_tracestate(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TRACESTATE && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// 1 to 200 visible ASCII characters: safe in a log line, a database row and a header.
pub fn is_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_REQUEST_ID && s.bytes().all(|b| b.is_ascii_graphic())
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

/// The statement that adds outbox rows from six arrays bound as `$1`–`$6` and their lease
/// as `$7` (see [`OutboxRows`]), in array order (which is the order the relay publishes one
/// order's events in). A macro, so that a store can put it in a bigger statement with
/// `concat!` (e.g. as a data-modifying `WITH` beside its own insert) and the text stays in
/// one place.
#[macro_export]
macro_rules! outbox_insert_from_params_1_to_7 {
    () => {
        "INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, payload, headers, lease_until)
         SELECT event_id, aggregate_id, exchange, routing_key, payload, headers::jsonb,
                now() + $7::float8 * interval '1 second'
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::text[])
                WITH ORDINALITY AS t(event_id, aggregate_id, exchange, routing_key, payload, headers, n)
          ORDER BY n"
    };
}

/// How long a leased row is left to its writer before any relay pass takes it. Long enough
/// that a writer's publish under load is not doubled by a pass; short enough that the
/// events of a writer that crashed after its commit leave soon after it.
pub const DIRECT_LEASE: Duration = Duration::from_secs(5);

/// An event ready to publish: what a relay pass reads from a pending row, or what a writer
/// hands over right after its commit.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Outgoing {
    pub event_id: uuid::Uuid,
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// The [`Causation`], as stored in the row.
    pub headers: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// The outbox columns of some events, as the six arrays and the lease of
/// [`outbox_insert_from_params_1_to_7`].
pub struct OutboxRows {
    ids: Vec<uuid::Uuid>,
    aggregates: Vec<uuid::Uuid>,
    exchanges: Vec<&'static str>,
    keys: Vec<&'static str>,
    payloads: Vec<Vec<u8>>,
    headers: Vec<String>,
    /// Seconds, counted by the database's clock (as the relay's check is).
    lease_seconds: Option<f64>,
}

impl OutboxRows {
    pub fn new(events: &[(Event, &Causation)]) -> Self {
        let n = events.len();
        let mut rows = OutboxRows {
            ids: Vec::with_capacity(n),
            aggregates: Vec::with_capacity(n),
            exchanges: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            headers: Vec::with_capacity(n),
            lease_seconds: None,
        };
        for (event, cause) in events {
            rows.ids.push(event.event_id());
            rows.aggregates.push(event.order_id());
            rows.exchanges.push(event.exchange());
            rows.keys.push(event.routing_key());
            rows.payloads.push(contracts::encode(event));
            rows.headers
                .push(serde_json::to_string(cause).unwrap_or_else(|_| "{}".into()));
        }
        rows
    }

    /// Rows that their writer publishes itself after its commit: no relay pass takes them
    /// for [`DIRECT_LEASE`]. Only for events that are the first of their order in this
    /// outbox (a new order's `order.created`, a new invoice's event): a later event would
    /// have to wait behind its order's older pending rows, which only a pass checks.
    /// Returns the events to hand to the relay once the transaction has committed.
    pub fn leased(&mut self) -> Vec<Outgoing> {
        let now = crate::db::now();
        self.lease_seconds = Some(DIRECT_LEASE.as_secs_f64());
        (0..self.ids.len())
            .map(|i| Outgoing {
                event_id: self.ids[i],
                exchange: self.exchanges[i].to_owned(),
                routing_key: self.keys[i].to_owned(),
                payload: self.payloads[i].clone(),
                headers: serde_json::from_str(&self.headers[i]).unwrap_or_default(),
                created_at: now,
            })
            .collect()
    }

    /// Binds the six arrays and the lease as the query's next seven parameters (its first
    /// seven for [`outbox_insert_from_params_1_to_7`]).
    pub fn bind_next(
        self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.ids)
            .bind(self.aggregates)
            .bind(self.exchanges)
            .bind(self.keys)
            .bind(self.payloads)
            .bind(self.headers)
            .bind(self.lease_seconds)
    }
}

/// Adds `events` to the outbox in one statement, in the order given (which is the order
/// the relay publishes one order's events in).
pub async fn enqueue_many(
    conn: &mut PgConnection,
    events: &[(Event, &Causation)],
) -> Result<(), sqlx::Error> {
    OutboxRows::new(events)
        .bind_next(sqlx::query(outbox_insert_from_params_1_to_7!()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_bounded_context_is_carried_on() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ok = Causation {
            traceparent: Some(tp.into()),
            tracestate: Some("vendor=abc".into()),
            request_id: Some("req-1".into()),
        };
        assert_eq!(ok.clone().sanitized(), ok);
        for bad_tp in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let c = Causation {
                traceparent: Some(bad_tp.into()),
                ..ok.clone()
            }
            .sanitized();
            assert_eq!((c.traceparent, c.tracestate), (None, None), "{bad_tp}");
        }
        for bad_id in ["", "a\u{0}b", "has space", &"x".repeat(128 * 1024)] {
            let c = Causation {
                request_id: Some(bad_id.into()),
                ..ok.clone()
            }
            .sanitized();
            assert_eq!(c.request_id, None);
            assert_eq!(c.traceparent.as_deref(), Some(tp));
        }
        let c = Causation {
            tracestate: Some("a=".repeat(400)),
            ..ok.clone()
        }
        .sanitized();
        assert_eq!(c.tracestate, None);
    }
}

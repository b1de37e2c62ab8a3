//! Invoices SQL. Each consumed event commits with its inbox row and its outgoing event;
//! events of one order are serialised by a transaction-scoped advisory lock on the order
//! id, so a concurrent create and cancel cannot both miss each other.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tracing::Instrument;
use uuid::Uuid;

use actors::amqp::{Incoming, Outcome};
use actors::db::Connections;
use actors::http::Cursor;
use actors::outbox::{self, Causation, OutboxRows, Outgoing};
use actors::page_query::PageQuery;
use actors::telemetry::TRACE_ONLY;
use contracts::{Event, InvoiceIssued, InvoicePaid, InvoiceVoided, OrderCanceled, OrderCreated};

use crate::domain::{self, Invoice, InvoiceStatus, PayDecision};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invoice not found")]
    NotFound,
    #[error("a void invoice cannot be paid")]
    VoidCannotBePaid,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if actors::db::is_transient(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Database(e)
        }
    }
}

/// What applying an order event did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Issued,
    Voided,
    /// order.created after its cancel: the invoice was born void.
    IssuedVoid,
    Tombstoned,
    Nothing,
}

#[derive(sqlx::FromRow)]
struct InvoiceRow {
    id: Uuid,
    number: String,
    order_id: Uuid,
    customer_id: Uuid,
    currency: String,
    amount_cents: i64,
    status: String,
    issued_at: DateTime<Utc>,
    due_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
}

impl TryFrom<InvoiceRow> for Invoice {
    type Error = StoreError;
    fn try_from(r: InvoiceRow) -> Result<Invoice, StoreError> {
        let status = InvoiceStatus::parse(&r.status).ok_or_else(|| {
            StoreError::Database(sqlx::Error::Decode(
                format!("unknown invoice status {:?}", r.status).into(),
            ))
        })?;
        Ok(Invoice {
            id: r.id,
            number: r.number,
            order_id: r.order_id,
            customer_id: r.customer_id,
            currency: r.currency,
            amount_cents: r.amount_cents,
            status,
            issued_at: r.issued_at,
            due_at: r.due_at,
            paid_at: r.paid_at,
        })
    }
}

const SELECT_BY_ID: &str = "SELECT id, number, order_id, customer_id, currency, amount_cents, status, issued_at, due_at, paid_at
                              FROM invoices WHERE id = $1";
const LOCK_BY_ID: &str = "SELECT id, number, order_id, customer_id, currency, amount_cents, status, issued_at, due_at, paid_at
                            FROM invoices WHERE id = $1 FOR UPDATE";
const LOCK_BY_ORDER: &str = "SELECT id, number, order_id, customer_id, currency, amount_cents, status, issued_at, due_at, paid_at
                               FROM invoices WHERE order_id = $1 FOR UPDATE";

#[tracing::instrument(target = TRACE_ONLY, name = "SELECT invoices", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT"))]
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Invoice, StoreError> {
    let row: Option<InvoiceRow> = sqlx::query_as(SELECT_BY_ID)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub order_id: Option<Uuid>,
    pub status: Option<InvoiceStatus>,
    pub after: Option<Cursor>,
    pub limit: i64,
}

/// Newest first; `limit + 1` rows so the caller can tell whether a next page exists.
#[tracing::instrument(target = TRACE_ONLY, name = "SELECT invoices", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT"))]
pub async fn list(pool: &PgPool, f: &ListFilter) -> Result<Vec<Invoice>, StoreError> {
    let mut query = PageQuery::new(
        "SELECT id, number, order_id, customer_id, currency, amount_cents, status, issued_at, due_at, paid_at
           FROM invoices",
    )
    .filter("order_id", f.order_id)
    .filter("status", f.status.map(InvoiceStatus::as_str))
    .page("issued_at", "id", f.after, f.limit + 1);
    let rows: Vec<InvoiceRow> = query.build_query_as().fetch_all(pool).await?;
    rows.into_iter().map(Invoice::try_from).collect()
}

/// Pays an issued invoice (idempotently) and emits `invoice.paid` once.
#[tracing::instrument(target = TRACE_ONLY, name = "UPDATE invoices", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE"))]
pub async fn pay(
    pool: &PgPool,
    id: Uuid,
    cause: &Causation,
) -> Result<(Invoice, bool), StoreError> {
    let mut tx = pool.begin().await?;
    let row: Option<InvoiceRow> = sqlx::query_as(LOCK_BY_ID)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let mut invoice: Invoice = row.ok_or(StoreError::NotFound)?.try_into()?;
    match invoice.status.on_pay() {
        // Release the row lock before answering: a dropped transaction rolls back later.
        PayDecision::AlreadyPaid => {
            tx.rollback().await?;
            return Ok((invoice, false));
        }
        PayDecision::Refuse => {
            tx.rollback().await?;
            return Err(StoreError::VoidCannotBePaid);
        }
        PayDecision::Pay => {}
    }
    let at = actors::db::now();
    sqlx::query("UPDATE invoices SET status = 'paid', paid_at = $2 WHERE id = $1")
        .bind(id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    let event = Event::InvoicePaid(InvoicePaid {
        event_id: Uuid::now_v7(),
        invoice_id: id,
        order_id: invoice.order_id,
        paid_at: at,
    });
    outbox::enqueue(&mut tx, &event, cause).await?;
    tx.commit().await?;
    invoice.status = InvoiceStatus::Paid;
    invoice.paid_at = Some(at);
    Ok((invoice, true))
}

/// Applies a batch of `order.*` events in one transaction, each exactly once and in the
/// order given. Events of one order are serialised across transactions (and replicas) by
/// a transaction-scoped advisory lock on the order id, so a concurrent create and cancel
/// cannot both miss each other. An invalid event is `Invalid` and leaves nothing behind.
pub async fn apply_order_events(
    db: &Connections,
    batch: &[Incoming],
    terms: Duration,
) -> Result<AppliedBatch, StoreError> {
    db.run(async |conn| apply_order_events_on(conn, batch, terms).await)
        .await
}

async fn apply_order_events_on(
    conn: &mut PgConnection,
    batch: &[Incoming],
    terms: Duration,
) -> Result<AppliedBatch, StoreError> {
    let creates: Vec<&OrderCreated> = batch
        .iter()
        .filter_map(|i| match &i.event {
            Event::OrderCreated(e) if e.violations().is_empty() => Some(e),
            _ => None,
        })
        .collect();
    let distinct: HashSet<Uuid> = creates.iter().map(|e| e.order_id).collect();
    if !batch.is_empty() && creates.len() == batch.len() && distinct.len() == batch.len() {
        return issue_distinct(conn, batch, &creates, terms).await;
    }
    let mut tx = conn.begin().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for incoming in batch {
        let outcome = apply_order_event(&mut tx, &incoming.event, terms, &incoming.delivered.cause)
            .instrument(incoming.delivered.span.clone())
            .await?;
        outcomes.push(outcome);
    }
    tx.commit().await?;
    Ok(AppliedBatch {
        outcomes,
        events: Vec::new(),
    })
}

/// What a batch of `order.*` events gave: an outcome and effect per event, and the events
/// of new invoices, for the relay to publish at once (their rows are leased to this node).
pub struct AppliedBatch {
    pub outcomes: Vec<(Outcome, Effect)>,
    pub events: Vec<Outgoing>,
}

/// A batch of valid `order.created` events for different orders (the steady state): the
/// same rules as [`issue`], in two round trips and no explicit transaction. The first draws
/// the invoice numbers (a sequence is outside transactions anyway); the second is one call
/// of the `issue_invoices` function (see its migration), which commits by itself: it takes
/// each order's lock, then, with a snapshot that sees any cancel that came first, records
/// the inbox rows, inserts the invoices (born void after a cancel) and their events. Both
/// versions of each event, issued and voided, are encoded here and the function keeps the
/// one that matches the invoice. An event delivered before draws a number it does not use,
/// a gap in the sequence like a rolled-back transaction's.
async fn issue_distinct(
    conn: &mut PgConnection,
    batch: &[Incoming],
    creates: &[&OrderCreated],
    terms: Duration,
) -> Result<AppliedBatch, StoreError> {
    let spans = actors::telemetry::batch_spans(
        "INSERT invoices",
        "INSERT",
        batch.iter().map(|i| &i.delivered.span),
    );
    let numbers: std::collections::HashMap<Uuid, i64> = sqlx::query_as(
        "SELECT t.id, nextval('invoice_number_seq')
           FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)
          ORDER BY n",
    )
    .bind(creates.iter().map(|e| e.order_id).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let issued_at = actors::db::now();
    let due_at = domain::due_at(issued_at, terms);
    let causes: std::collections::HashMap<Uuid, &Causation> = batch
        .iter()
        .map(|i| (i.event.event_id(), &i.delivered.cause))
        .collect();
    let mut invoices = Vec::with_capacity(creates.len());
    let mut events = Vec::with_capacity(creates.len() * 2);
    let mut event_statuses = Vec::with_capacity(creates.len() * 2);
    for e in creates {
        let id = Uuid::now_v7();
        let number = domain::invoice_number(
            issued_at,
            numbers.get(&e.order_id).copied().unwrap_or_default(),
        );
        let cause = causes.get(&e.event_id).copied().unwrap_or(&NO_CAUSE);
        events.push((
            Event::InvoiceIssued(InvoiceIssued {
                event_id: Uuid::now_v7(),
                invoice_id: id,
                order_id: e.order_id,
                number: number.clone(),
                currency: e.currency.clone(),
                amount_cents: e.total_cents,
                issued_at,
                due_at,
            }),
            cause,
        ));
        event_statuses.push(InvoiceStatus::Issued.as_str());
        events.push((
            Event::InvoiceVoided(InvoiceVoided {
                event_id: Uuid::now_v7(),
                invoice_id: id,
                order_id: e.order_id,
                voided_at: issued_at,
            }),
            cause,
        ));
        event_statuses.push(InvoiceStatus::Void.as_str());
        invoices.push((id, number, *e));
    }
    let statement = sqlx::query(
        "SELECT order_id, first, status
           FROM issue_invoices($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                               $15, $16, $17)",
    );
    // Each invoice's event is its order's first in this outbox (the invoice is new), so it
    // is leased and handed to the relay after the commit.
    let mut outbox_rows = OutboxRows::new(&events);
    let leased = outbox_rows.leased();
    let leased_for: Vec<(Uuid, &str)> = events
        .iter()
        .zip(&event_statuses)
        .map(|((event, _), status)| (event.order_id(), *status))
        .collect();
    let rows = outbox_rows
        .bind_next(statement)
        .bind(creates.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(invoices.iter().map(|i| i.0).collect::<Vec<_>>())
        .bind(invoices.iter().map(|i| i.1.clone()).collect::<Vec<_>>())
        .bind(creates.iter().map(|e| e.order_id).collect::<Vec<_>>())
        .bind(creates.iter().map(|e| e.customer_id).collect::<Vec<_>>())
        .bind(
            creates
                .iter()
                .map(|e| e.currency.clone())
                .collect::<Vec<_>>(),
        )
        .bind(creates.iter().map(|e| e.total_cents).collect::<Vec<_>>())
        .bind(event_statuses)
        .bind(issued_at)
        .bind(due_at)
        .fetch_all(&mut *conn)
        .await?;
    let mut outcomes = std::collections::HashMap::with_capacity(rows.len());
    let mut statuses = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let (order_id, first, status): (Uuid, bool, Option<String>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if let Some(status) = &status {
            statuses.insert(order_id, status.clone());
        }
        let outcome = match (first, status.as_deref()) {
            (false, _) => (Outcome::Duplicate, Effect::Nothing),
            (true, Some("void")) => (Outcome::Applied, Effect::IssuedVoid),
            (true, Some(_)) => (Outcome::Applied, Effect::Issued),
            // A second order.created for the same order under another event id.
            (true, None) => (Outcome::Applied, Effect::Nothing),
        };
        outcomes.insert(order_id, outcome);
    }
    drop(spans);
    // The events the statement kept: the one of each new invoice's status.
    let events = leased
        .into_iter()
        .zip(leased_for)
        .filter(|(_, (order_id, status))| {
            statuses.get(order_id).map(String::as_str) == Some(*status)
        })
        .map(|(event, _)| event)
        .collect();
    Ok(AppliedBatch {
        outcomes: creates
            .iter()
            .map(|e| {
                outcomes.get(&e.order_id).cloned().unwrap_or((
                    Outcome::Invalid("the store gave no answer for this event".into()),
                    Effect::Nothing,
                ))
            })
            .collect(),
        events,
    })
}

/// The cause of an event whose delivery carried none.
static NO_CAUSE: Causation = Causation {
    traceparent: None,
    tracestate: None,
    request_id: None,
};

async fn apply_order_event(
    tx: &mut PgConnection,
    event: &Event,
    terms: Duration,
    cause: &Causation,
) -> Result<(Outcome, Effect), StoreError> {
    if let Some(reason) = event.contract_breach() {
        return Ok((Outcome::Invalid(reason), Effect::Nothing));
    }
    let order_id = match event {
        Event::OrderCreated(e) => e.order_id,
        Event::OrderCanceled(e) => e.order_id,
        other => {
            return Ok((
                Outcome::Invalid(format!(
                    "{} does not belong on this queue",
                    other.routing_key()
                )),
                Effect::Nothing,
            ));
        }
    };
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    if !outbox::first_delivery(&mut *tx, event.event_id(), event.routing_key()).await? {
        return Ok((Outcome::Duplicate, Effect::Nothing));
    }
    let effect = match event {
        Event::OrderCreated(e) => issue(&mut *tx, e, terms, cause).await?,
        Event::OrderCanceled(e) => void(&mut *tx, e, cause).await?,
        _ => Effect::Nothing,
    };
    Ok((Outcome::Applied, effect))
}

#[tracing::instrument(target = TRACE_ONLY, name = "INSERT invoices", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT"))]
async fn issue(
    tx: &mut PgConnection,
    e: &OrderCreated,
    terms: Duration,
    cause: &Causation,
) -> Result<Effect, StoreError> {
    // The invoice number's sequence, and whether the order's cancel came first.
    let (sequence, canceled): (i64, bool) = sqlx::query_as(
        "SELECT nextval('invoice_number_seq'),
                EXISTS (SELECT 1 FROM canceled_orders WHERE order_id = $1)",
    )
    .bind(e.order_id)
    .fetch_one(&mut *tx)
    .await?;
    let issued_at = actors::db::now();
    let number = domain::invoice_number(issued_at, sequence);
    let id = Uuid::now_v7();
    let due_at = domain::due_at(issued_at, terms);
    let status = if canceled {
        InvoiceStatus::Void
    } else {
        InvoiceStatus::Issued
    };
    let inserted = sqlx::query(
        "INSERT INTO invoices (id, number, order_id, customer_id, currency, amount_cents, status, issued_at, due_at, voided_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(id)
    .bind(&number)
    .bind(e.order_id)
    .bind(e.customer_id)
    .bind(&e.currency)
    .bind(e.total_cents)
    .bind(status.as_str())
    .bind(issued_at)
    .bind(due_at)
    .bind(canceled.then_some(issued_at))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        // A second order.created for the same order under another event id: one invoice.
        return Ok(Effect::Nothing);
    }
    let event = if canceled {
        Event::InvoiceVoided(InvoiceVoided {
            event_id: Uuid::now_v7(),
            invoice_id: id,
            order_id: e.order_id,
            voided_at: issued_at,
        })
    } else {
        Event::InvoiceIssued(InvoiceIssued {
            event_id: Uuid::now_v7(),
            invoice_id: id,
            order_id: e.order_id,
            number,
            currency: e.currency.clone(),
            amount_cents: e.total_cents,
            issued_at,
            due_at,
        })
    };
    outbox::enqueue(&mut *tx, &event, cause).await?;
    Ok(if canceled {
        Effect::IssuedVoid
    } else {
        Effect::Issued
    })
}

#[tracing::instrument(target = TRACE_ONLY, name = "UPDATE invoices", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE"))]
async fn void(
    tx: &mut PgConnection,
    e: &OrderCanceled,
    cause: &Causation,
) -> Result<Effect, StoreError> {
    let row: Option<InvoiceRow> = sqlx::query_as(LOCK_BY_ORDER)
        .bind(e.order_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(invoice) = row.map(Invoice::try_from).transpose()? else {
        sqlx::query("INSERT INTO canceled_orders (order_id, canceled_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(e.order_id)
            .bind(e.canceled_at)
            .execute(&mut *tx)
            .await?;
        return Ok(Effect::Tombstoned);
    };
    if !invoice.status.voided_by_cancel() {
        return Ok(Effect::Nothing);
    }
    let at = actors::db::now();
    sqlx::query("UPDATE invoices SET status = 'void', voided_at = $2 WHERE id = $1")
        .bind(invoice.id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    let event = Event::InvoiceVoided(InvoiceVoided {
        event_id: Uuid::now_v7(),
        invoice_id: invoice.id,
        order_id: e.order_id,
        voided_at: at,
    });
    outbox::enqueue(&mut *tx, &event, cause).await?;
    Ok(Effect::Voided)
}

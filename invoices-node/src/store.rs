//! Invoices SQL. Each consumed event commits with its inbox row and its outgoing event;
//! events of one order are serialised by a transaction-scoped advisory lock on the order
//! id, so a concurrent create and cancel cannot both miss each other.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use actors::amqp::{Incoming, Outcome};
use actors::db::Connections;
use actors::http::Cursor;
use actors::outbox::{self, Causation};
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

#[tracing::instrument(name = "SELECT invoices", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT"))]
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
#[tracing::instrument(name = "SELECT invoices", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT"))]
pub async fn list(pool: &PgPool, f: &ListFilter) -> Result<Vec<Invoice>, StoreError> {
    let rows: Vec<InvoiceRow> = sqlx::query_as(
        "SELECT id, number, order_id, customer_id, currency, amount_cents, status, issued_at, due_at, paid_at
           FROM invoices
          WHERE ($1::uuid IS NULL OR order_id = $1)
            AND ($2::text IS NULL OR status = $2)
            AND ($3::timestamptz IS NULL OR (issued_at, id) < ($3, $4))
          ORDER BY issued_at DESC, id DESC
          LIMIT $5",
    )
    .bind(f.order_id)
    .bind(f.status.map(InvoiceStatus::as_str))
    .bind(f.after.map(|c| c.at))
    .bind(f.after.map(|c| c.id))
    .bind(f.limit + 1)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Invoice::try_from).collect()
}

/// Pays an issued invoice (idempotently) and emits `invoice.paid` once.
#[tracing::instrument(name = "UPDATE invoices", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE"))]
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
) -> Result<Vec<(Outcome, Effect)>, StoreError> {
    let mut conn = db.take().await?;
    let outcomes = apply_order_events_on(&mut conn, batch, terms).await?;
    conn.keep();
    Ok(outcomes)
}

async fn apply_order_events_on(
    conn: &mut PgConnection,
    batch: &[Incoming],
    terms: Duration,
) -> Result<Vec<(Outcome, Effect)>, StoreError> {
    let mut tx = conn.begin().await?;
    let creates: Vec<&OrderCreated> = batch
        .iter()
        .filter_map(|i| match &i.event {
            Event::OrderCreated(e) if e.violations().is_empty() => Some(e),
            _ => None,
        })
        .collect();
    let distinct: HashSet<Uuid> = creates.iter().map(|e| e.order_id).collect();
    let outcomes =
        if batch.len() > 1 && creates.len() == batch.len() && distinct.len() == batch.len() {
            issue_distinct(&mut tx, batch, &creates, terms).await?
        } else {
            let mut outcomes = Vec::with_capacity(batch.len());
            for incoming in batch {
                let outcome =
                    apply_order_event(&mut tx, &incoming.event, terms, &incoming.delivered.cause)
                        .instrument(incoming.delivered.span.clone())
                        .await?;
                outcomes.push(outcome);
            }
            outcomes
        };
    tx.commit().await?;
    Ok(outcomes)
}

/// A batch of valid `order.created` events for different orders (the steady state): the
/// same rules as [`issue`], in five statements for the whole batch instead of five per event.
async fn issue_distinct(
    tx: &mut PgConnection,
    batch: &[Incoming],
    creates: &[&OrderCreated],
    terms: Duration,
) -> Result<Vec<(Outcome, Effect)>, StoreError> {
    let spans = actors::telemetry::batch_spans(
        "INSERT invoices",
        "INSERT",
        batch.iter().map(|i| &i.delivered.span),
    );
    let mut order_ids: Vec<Uuid> = creates.iter().map(|e| e.order_id).collect();
    // One lock order for every batch, so two batches never wait on each other in a cycle.
    order_ids.sort();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(id::text, 0)) FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n) ORDER BY n")
        .bind(&order_ids)
        .execute(&mut *tx)
        .await?;
    let event_ids: Vec<Uuid> = creates.iter().map(|e| e.event_id).collect();
    let types = vec![contracts::topology::ORDER_CREATED; creates.len()];
    let first: HashSet<Uuid> = outbox::first_deliveries(&mut *tx, &event_ids, &types)
        .await?
        .into_iter()
        .collect();
    let fresh: Vec<&&OrderCreated> = creates
        .iter()
        .filter(|e| first.contains(&e.event_id))
        .collect();
    let mut effects: std::collections::HashMap<Uuid, Effect> = std::collections::HashMap::new();
    if !fresh.is_empty() {
        let fresh_orders: Vec<Uuid> = fresh.iter().map(|e| e.order_id).collect();
        // Per fresh order, in order: its invoice number's sequence, and whether its cancel
        // came first (a tombstone).
        let numbered: Vec<(i64, bool)> = sqlx::query_as(
            "SELECT nextval('invoice_number_seq'),
                    EXISTS (SELECT 1 FROM canceled_orders c WHERE c.order_id = t.id)
               FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)
              ORDER BY n",
        )
        .bind(&fresh_orders)
        .fetch_all(&mut *tx)
        .await?;
        let issued_at = actors::db::now();
        let due_at = domain::due_at(issued_at, terms);
        let invoices: Vec<(Uuid, String, &OrderCreated, InvoiceStatus)> = fresh
            .iter()
            .zip(&numbered)
            .map(|(e, (seq, canceled))| {
                let status = if *canceled {
                    InvoiceStatus::Void
                } else {
                    InvoiceStatus::Issued
                };
                (
                    Uuid::now_v7(),
                    domain::invoice_number(issued_at, *seq),
                    **e,
                    status,
                )
            })
            .collect();
        let inserted: HashSet<Uuid> = sqlx::query_scalar(
            "INSERT INTO invoices (id, number, order_id, customer_id, currency, amount_cents, status, issued_at, due_at, voided_at)
             SELECT id, number, order_id, customer_id, currency, amount_cents, status, $8, $9,
                    CASE WHEN status = 'void' THEN $8 END
               FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::int8[], $7::text[])
                    WITH ORDINALITY AS t(id, number, order_id, customer_id, currency, amount_cents, status, n)
              ORDER BY n
             ON CONFLICT (order_id) DO NOTHING
             RETURNING order_id",
        )
        .bind(invoices.iter().map(|i| i.0).collect::<Vec<_>>())
        .bind(invoices.iter().map(|i| i.1.clone()).collect::<Vec<_>>())
        .bind(invoices.iter().map(|i| i.2.order_id).collect::<Vec<_>>())
        .bind(invoices.iter().map(|i| i.2.customer_id).collect::<Vec<_>>())
        .bind(invoices.iter().map(|i| i.2.currency.clone()).collect::<Vec<_>>())
        .bind(invoices.iter().map(|i| i.2.total_cents).collect::<Vec<_>>())
        .bind(invoices.iter().map(|i| i.3.as_str()).collect::<Vec<_>>())
        .bind(issued_at)
        .bind(due_at)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let causes: std::collections::HashMap<Uuid, &Causation> = batch
            .iter()
            .map(|i| (i.event.event_id(), &i.delivered.cause))
            .collect();
        let mut events = Vec::with_capacity(inserted.len());
        for (id, number, e, status) in &invoices {
            if !inserted.contains(&e.order_id) {
                // A second order.created for the same order under another event id.
                continue;
            }
            let event = if *status == InvoiceStatus::Void {
                effects.insert(e.order_id, Effect::IssuedVoid);
                Event::InvoiceVoided(InvoiceVoided {
                    event_id: Uuid::now_v7(),
                    invoice_id: *id,
                    order_id: e.order_id,
                    voided_at: issued_at,
                })
            } else {
                effects.insert(e.order_id, Effect::Issued);
                Event::InvoiceIssued(InvoiceIssued {
                    event_id: Uuid::now_v7(),
                    invoice_id: *id,
                    order_id: e.order_id,
                    number: number.clone(),
                    currency: e.currency.clone(),
                    amount_cents: e.total_cents,
                    issued_at,
                    due_at,
                })
            };
            let cause = causes.get(&e.event_id).copied();
            events.push((event, cause.cloned().unwrap_or_default()));
        }
        let events: Vec<(Event, &Causation)> = events.iter().map(|(e, c)| (e.clone(), c)).collect();
        outbox::enqueue_many(&mut *tx, &events).await?;
    }
    drop(spans);
    Ok(creates
        .iter()
        .map(|e| {
            if first.contains(&e.event_id) {
                (
                    Outcome::Applied,
                    effects.get(&e.order_id).copied().unwrap_or(Effect::Nothing),
                )
            } else {
                (Outcome::Duplicate, Effect::Nothing)
            }
        })
        .collect())
}

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

#[tracing::instrument(name = "INSERT invoices", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT"))]
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

#[tracing::instrument(name = "UPDATE invoices", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE"))]
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

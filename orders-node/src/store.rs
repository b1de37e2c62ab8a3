//! Orders SQL. Every state change and its event commit in one transaction (outbox), and
//! every consumed event commits with its inbox row.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use actors::amqp::Handled;
use actors::http::Cursor;
use actors::outbox::{self, Causation};
use contracts::{Event, LineItem, OrderCanceled, OrderCreated};

use crate::domain::{CancelDecision, NewOrder, Order, OrderStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order not found")]
    NotFound,
    #[error("a paid order cannot be canceled")]
    PaidCannotCancel,
    #[error("this Idempotency-Key was used with a different request")]
    KeyReused,
    #[error("a request with this Idempotency-Key is still in progress")]
    KeyInFlight,
    #[error("event for unknown order {0}")]
    UnknownOrder(Uuid),
    #[error("event {0} does not belong on this queue")]
    WrongEvent(&'static str),
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if actors::db::is_transient(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Database(e)
        }
    }
}

/// The outcome of a create: new, or the replay of an earlier request with the same key.
#[derive(Debug, Clone)]
pub enum Created {
    New(Order),
    Replayed {
        status: u16,
        body: serde_json::Value,
    },
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    customer_id: Uuid,
    currency: String,
    items: Json<Vec<LineItem>>,
    total_cents: i64,
    status: String,
    invoice_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<OrderRow> for Order {
    type Error = StoreError;
    fn try_from(r: OrderRow) -> Result<Order, StoreError> {
        let status = OrderStatus::parse(&r.status).ok_or_else(|| {
            StoreError::Database(sqlx::Error::Decode(
                format!("unknown order status {:?}", r.status).into(),
            ))
        })?;
        Ok(Order {
            id: r.id,
            customer_id: r.customer_id,
            currency: r.currency,
            items: r.items.0,
            total_cents: r.total_cents,
            status,
            invoice_id: r.invoice_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

const SELECT_BY_ID: &str = "SELECT id, customer_id, currency, items, total_cents, status, invoice_id, created_at, updated_at
                              FROM orders WHERE id = $1";
const LOCK_BY_ID: &str = "SELECT id, customer_id, currency, items, total_cents, status, invoice_id, created_at, updated_at
                            FROM orders WHERE id = $1 FOR UPDATE";

/// Creates an order and its `order.created` event in one transaction, honouring the
/// Idempotency-Key. A transaction-scoped advisory lock on the key tells "still in flight"
/// (409) from "done" (replay) without a separate in-progress state that a crash could strand.
#[tracing::instrument(name = "INSERT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT"))]
pub async fn create(
    pool: &PgPool,
    new: &NewOrder,
    key: Option<&str>,
    cause: &Causation,
) -> Result<Created, StoreError> {
    let mut tx = pool.begin().await?;
    let request = serde_json::to_value(new).unwrap_or_default();
    if let Some(key) = key {
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
        if !locked {
            return Err(StoreError::KeyInFlight);
        }
        let previous: Option<(Json<serde_json::Value>, i16, Json<serde_json::Value>)> =
            sqlx::query_as("SELECT request, status, response FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((Json(previous_request), status, Json(body))) = previous {
            // End the transaction now: dropping it would roll back later, and the key's lock
            // would outlive this answer, turning a quick retry into a spurious 409.
            tx.rollback().await?;
            return if previous_request == request {
                Ok(Created::Replayed {
                    status: status as u16,
                    body,
                })
            } else {
                Err(StoreError::KeyReused)
            };
        }
    }
    let at = actors::db::now();
    let order = Order {
        id: Uuid::now_v7(),
        customer_id: new.customer_id,
        currency: new.currency.clone(),
        items: new.items.clone(),
        total_cents: new.total_cents(),
        status: OrderStatus::Pending,
        invoice_id: None,
        created_at: at,
        updated_at: at,
    };
    sqlx::query(
        "INSERT INTO orders (id, customer_id, currency, items, total_cents, status, invoice_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $7)",
    )
    .bind(order.id)
    .bind(order.customer_id)
    .bind(&order.currency)
    .bind(Json(&order.items))
    .bind(order.total_cents)
    .bind(order.status.as_str())
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let event = Event::OrderCreated(OrderCreated {
        event_id: Uuid::now_v7(),
        order_id: order.id,
        customer_id: order.customer_id,
        currency: order.currency.clone(),
        items: order.items.clone(),
        total_cents: order.total_cents,
        created_at: at,
    });
    outbox::enqueue(&mut tx, &event, cause).await?;
    if let Some(key) = key {
        sqlx::query("INSERT INTO idempotency_keys (key, request, status, response) VALUES ($1, $2, 201, $3)")
            .bind(key)
            .bind(Json(&request))
            .bind(Json(&order))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Created::New(order))
}

#[tracing::instrument(name = "SELECT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT"))]
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Order, StoreError> {
    let row: Option<OrderRow> = sqlx::query_as(SELECT_BY_ID)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.ok_or(StoreError::NotFound)?.try_into()
}

/// Filters of `GET /orders`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub customer_id: Option<Uuid>,
    pub status: Option<OrderStatus>,
    pub after: Option<Cursor>,
    pub limit: i64,
}

/// Newest first; fetches `limit + 1` rows so the caller can tell whether a next page exists.
#[tracing::instrument(name = "SELECT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT"))]
pub async fn list(pool: &PgPool, f: &ListFilter) -> Result<Vec<Order>, StoreError> {
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, customer_id, currency, items, total_cents, status, invoice_id, created_at, updated_at
           FROM orders
          WHERE ($1::uuid IS NULL OR customer_id = $1)
            AND ($2::text IS NULL OR status = $2)
            AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
          ORDER BY created_at DESC, id DESC
          LIMIT $5",
    )
    .bind(f.customer_id)
    .bind(f.status.map(OrderStatus::as_str))
    .bind(f.after.map(|c| c.at))
    .bind(f.after.map(|c| c.id))
    .bind(f.limit + 1)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Order::try_from).collect()
}

async fn lock_order(conn: &mut PgConnection, id: Uuid) -> Result<Option<Order>, StoreError> {
    let row: Option<OrderRow> = sqlx::query_as(LOCK_BY_ID)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(Order::try_from).transpose()
}

/// Cancels an order (idempotently) and emits `order.canceled` once. `Ok((order, true))`
/// when this call canceled it.
#[tracing::instrument(name = "UPDATE orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE"))]
pub async fn cancel(
    pool: &PgPool,
    id: Uuid,
    reason: Option<String>,
    cause: &Causation,
) -> Result<(Order, bool), StoreError> {
    let mut tx = pool.begin().await?;
    let mut order = lock_order(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
    match order.status.on_cancel() {
        // Release the row lock before answering (see `create`).
        CancelDecision::AlreadyCanceled => {
            tx.rollback().await?;
            return Ok((order, false));
        }
        CancelDecision::Refuse => {
            tx.rollback().await?;
            return Err(StoreError::PaidCannotCancel);
        }
        CancelDecision::Cancel => {}
    }
    let at = actors::db::now();
    sqlx::query("UPDATE orders SET status = 'canceled', updated_at = $2 WHERE id = $1")
        .bind(id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    let event = Event::OrderCanceled(OrderCanceled {
        event_id: Uuid::now_v7(),
        order_id: id,
        canceled_at: at,
        reason,
    });
    outbox::enqueue(&mut tx, &event, cause).await?;
    tx.commit().await?;
    order.status = OrderStatus::Canceled;
    order.updated_at = at;
    Ok((order, true))
}

/// Applies an `invoice.*` event once; the status only moves forward.
#[tracing::instrument(name = "UPDATE orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE"))]
pub async fn apply_invoice_event(
    pool: &PgPool,
    event: &Event,
) -> Result<(Handled, Option<OrderStatus>), StoreError> {
    let (order_id, invoice_id) = match event {
        Event::InvoiceIssued(e) => (e.order_id, e.invoice_id),
        Event::InvoicePaid(e) => (e.order_id, e.invoice_id),
        Event::InvoiceVoided(e) => (e.order_id, e.invoice_id),
        other => return Err(StoreError::WrongEvent(other.routing_key())),
    };
    let mut tx = pool.begin().await?;
    if !outbox::first_delivery(&mut tx, event.event_id(), event.routing_key()).await? {
        tx.rollback().await?;
        return Ok((Handled::Duplicate, None));
    }
    let order = lock_order(&mut tx, order_id)
        .await?
        .ok_or(StoreError::UnknownOrder(order_id))?;
    let next = match event {
        Event::InvoiceIssued(_) => order.status.on_invoice_issued(),
        Event::InvoicePaid(_) => order.status.on_invoice_paid(),
        _ => order.status,
    };
    sqlx::query("UPDATE orders SET status = $2, invoice_id = COALESCE(invoice_id, $3), updated_at = $4 WHERE id = $1")
        .bind(order_id)
        .bind(next.as_str())
        .bind(invoice_id)
        .bind(actors::db::now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((Handled::Applied, (next != order.status).then_some(next)))
}

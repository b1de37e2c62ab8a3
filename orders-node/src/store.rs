//! Orders SQL. Every state change and its event commit in one transaction (outbox), and
//! every consumed event commits with its inbox row.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use actors::amqp::{Incoming, Outcome};
use actors::db::Connections;
use actors::http::Cursor;
use actors::outbox::{self, Causation, OutboxRows, Outgoing};
use actors::page_query::PageQuery;
use actors::telemetry::TRACE_ONLY;
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
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("the store gave no answer for this request")]
    Empty,
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

/// One `POST /orders` waiting to be committed.
pub struct CreateRequest {
    pub order: NewOrder,
    pub key: Option<String>,
    pub cause: Causation,
    /// The request's span: the `INSERT orders` span of this order goes below it.
    pub span: tracing::Span,
}

/// What a group of creates gave: a result per request, and the `order.created` events
/// committed, for the relay to publish at once (their rows are leased to this node).
pub struct CreatedGroup {
    pub results: Vec<Result<Created, StoreError>>,
    pub events: Vec<Outgoing>,
}

impl CreatedGroup {
    fn failed(requests: &[CreateRequest], error: impl Fn() -> StoreError) -> Self {
        CreatedGroup {
            results: requests.iter().map(|_| Err(error())).collect(),
            events: Vec::new(),
        }
    }
}

/// Creates the orders of `requests` and their `order.created` events, all in one
/// transaction (group commit): one commit for the group, and every caller is answered only
/// after it. If the group fails for a reason other than an outage, each request is tried
/// again alone, so one bad row cannot fail its batchmates.
pub async fn create_many(db: &Connections, requests: &[CreateRequest]) -> CreatedGroup {
    let mut conn = match db.take().await {
        Ok(conn) => conn,
        Err(e) => {
            let why = e.to_string();
            return CreatedGroup::failed(requests, || StoreError::Unavailable(why.clone()));
        }
    };
    let group = create_many_on(&mut conn, requests).await;
    if !group
        .results
        .iter()
        .any(|r| matches!(r, Err(StoreError::Unavailable(_) | StoreError::Database(_))))
    {
        conn.keep();
    }
    group
}

async fn create_many_on(conn: &mut PgConnection, requests: &[CreateRequest]) -> CreatedGroup {
    match create_group(conn, requests).await {
        Ok(group) => group,
        Err(StoreError::Unavailable(why)) => {
            CreatedGroup::failed(requests, || StoreError::Unavailable(why.clone()))
        }
        Err(e) if requests.len() == 1 => CreatedGroup {
            results: vec![Err(e)],
            events: Vec::new(),
        },
        Err(e) => {
            tracing::warn!(error = %e, size = requests.len(), "a group of creates failed; committing them one by one");
            let mut all = CreatedGroup {
                results: Vec::with_capacity(requests.len()),
                events: Vec::new(),
            };
            for request in requests {
                match create_group(conn, std::slice::from_ref(request)).await {
                    Ok(mut one) => {
                        all.results
                            .push(one.results.pop().unwrap_or(Err(StoreError::Empty)));
                        all.events.append(&mut one.events);
                    }
                    Err(e) => all.results.push(Err(e)),
                }
            }
            all
        }
    }
}

/// The group transaction. An `Idempotency-Key` is held by a transaction-scoped advisory
/// lock, which tells "still in flight" (409) from "done" (replay) without a separate
/// in-progress state that a crash could strand; the same key twice in one group is "in
/// flight" for the second.
async fn create_group(
    conn: &mut PgConnection,
    requests: &[CreateRequest],
) -> Result<CreatedGroup, StoreError> {
    if requests.iter().all(|r| r.key.is_none()) {
        return create_without_keys(conn, requests).await;
    }
    let spans =
        actors::telemetry::batch_spans("INSERT orders", "INSERT", requests.iter().map(|r| &r.span));
    let mut tx = conn.begin().await?;
    let at = actors::db::now();
    let mut results: Vec<Option<Result<Created, StoreError>>> =
        requests.iter().map(|_| None).collect();
    let mut keys_seen = HashSet::new();
    let mut orders = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let normalized = serde_json::to_value(&request.order).unwrap_or_default();
        if let Some(key) = request.key.as_deref() {
            if !keys_seen.insert(key) || !lock_key(&mut tx, key).await? {
                results[i] = Some(Err(StoreError::KeyInFlight));
                continue;
            }
            let previous: Option<(Json<serde_json::Value>, i16, Json<serde_json::Value>)> =
                sqlx::query_as(
                    "SELECT request, status, response FROM idempotency_keys WHERE key = $1",
                )
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some((Json(previous_request), status, Json(body))) = previous {
                results[i] = Some(if previous_request == normalized {
                    Ok(Created::Replayed {
                        status: status as u16,
                        body,
                    })
                } else {
                    Err(StoreError::KeyReused)
                });
                continue;
            }
        }
        let order = new_order(&request.order, at);
        orders.push((i, order, normalized));
    }
    let mut outgoing = Vec::new();
    if !orders.is_empty() {
        let events: Vec<(Event, &Causation)> = orders
            .iter()
            .map(|(i, order, _)| (created_event(order), &requests[*i].cause))
            .collect();
        let (insert, leased) = insert_with_events(orders.iter().map(|(_, o, _)| o), &events);
        insert.execute(&mut *tx).await?;
        outgoing = leased;
        for (i, order, normalized) in &orders {
            if let Some(key) = requests[*i].key.as_deref() {
                sqlx::query("INSERT INTO idempotency_keys (key, request, status, response) VALUES ($1, $2, 201, $3)")
                    .bind(key)
                    .bind(Json(normalized))
                    .bind(Json(order))
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    drop(spans);
    for (i, order, _) in orders {
        results[i] = Some(Ok(Created::New(order)));
    }
    Ok(CreatedGroup {
        results: results
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::Empty)))
            .collect(),
        events: outgoing,
    })
}

async fn lock_key(tx: &mut PgConnection, key: &str) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(key)
            .fetch_one(tx)
            .await?,
    )
}

/// A group without an `Idempotency-Key` (the usual case): the orders and their events in
/// one statement, which PostgreSQL runs as a transaction of its own — one round trip and
/// one commit, where `BEGIN`, two inserts and `COMMIT` would be four round trips.
async fn create_without_keys(
    conn: &mut PgConnection,
    requests: &[CreateRequest],
) -> Result<CreatedGroup, StoreError> {
    let spans =
        actors::telemetry::batch_spans("INSERT orders", "INSERT", requests.iter().map(|r| &r.span));
    let at = actors::db::now();
    let orders: Vec<Order> = requests.iter().map(|r| new_order(&r.order, at)).collect();
    let events: Vec<(Event, &Causation)> = orders
        .iter()
        .zip(requests)
        .map(|(order, request)| (created_event(order), &request.cause))
        .collect();
    let (insert, leased) = insert_with_events(orders.iter(), &events);
    insert.execute(conn).await?;
    drop(spans);
    Ok(CreatedGroup {
        results: orders.into_iter().map(|o| Ok(Created::New(o))).collect(),
        events: leased,
    })
}

fn new_order(new: &NewOrder, at: DateTime<Utc>) -> Order {
    Order {
        id: Uuid::now_v7(),
        customer_id: new.customer_id,
        currency: new.currency.clone(),
        items: new.items.clone(),
        total_cents: new.total_cents(),
        status: OrderStatus::Pending,
        invoice_id: None,
        created_at: at,
        updated_at: at,
    }
}

fn created_event(order: &Order) -> Event {
    Event::OrderCreated(OrderCreated {
        event_id: Uuid::now_v7(),
        order_id: order.id,
        customer_id: order.customer_id,
        currency: order.currency.clone(),
        items: order.items.clone(),
        total_cents: order.total_cents,
        created_at: order.created_at,
    })
}

/// One statement for a group of new orders and their events: the outbox rows in a
/// data-modifying `WITH`, then one multi-row insert of the orders (all created at the same
/// moment, the group's). The rows are leased: each is its order's first event, so the
/// relay may publish it as soon as the statement's transaction commits (the returned
/// events), without selecting it.
fn insert_with_events<'q, 'a>(
    orders: impl Iterator<Item = &'a Order>,
    events: &[(Event, &Causation)],
) -> (
    sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    Vec<Outgoing>,
) {
    let (mut ids, mut customers, mut currencies, mut items, mut totals) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut at = None;
    for o in orders {
        ids.push(o.id);
        customers.push(o.customer_id);
        currencies.push(o.currency.clone());
        items.push(serde_json::to_string(&o.items).unwrap_or_else(|_| "[]".into()));
        totals.push(o.total_cents);
        at = Some(o.created_at);
    }
    let query = sqlx::query(concat!(
        "WITH new_events AS (",
        actors::outbox_insert_from_params_1_to_7!(),
        ")
         INSERT INTO orders (id, customer_id, currency, items, total_cents, status, invoice_id, created_at, updated_at)
         SELECT id, customer_id, currency, items::jsonb, total_cents, 'pending', NULL, $13, $13
           FROM unnest($8::uuid[], $9::uuid[], $10::text[], $11::text[], $12::int8[])
                AS t(id, customer_id, currency, items, total_cents)"
    ));
    let mut rows = OutboxRows::new(events);
    let leased = rows.leased();
    let query = rows
        .bind_next(query)
        .bind(ids)
        .bind(customers)
        .bind(currencies)
        .bind(items)
        .bind(totals)
        .bind(at.unwrap_or_else(actors::db::now));
    (query, leased)
}

#[tracing::instrument(target = TRACE_ONLY, name = "SELECT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT"))]
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
#[tracing::instrument(target = TRACE_ONLY, name = "SELECT orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT"))]
pub async fn list(pool: &PgPool, f: &ListFilter) -> Result<Vec<Order>, StoreError> {
    let mut query = PageQuery::new(
        "SELECT id, customer_id, currency, items, total_cents, status, invoice_id, created_at, updated_at
           FROM orders",
    )
    .filter("customer_id", f.customer_id)
    .filter("status", f.status.map(OrderStatus::as_str))
    .page("created_at", "id", f.after, f.limit + 1);
    let rows: Vec<OrderRow> = query.build_query_as().fetch_all(pool).await?;
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
#[tracing::instrument(target = TRACE_ONLY, name = "UPDATE orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE"))]
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

/// Applies a batch of `invoice.*` events, each exactly once and in the order given; an
/// order's status only moves forward. An event for an unknown order is `Invalid` and
/// leaves nothing behind (not even its inbox row). Also returns each order's new status,
/// for metrics. A batch whose events all concern different orders (the steady state) is
/// one statement; any other runs event by event in one transaction.
pub async fn apply_invoice_events(
    db: &Connections,
    batch: &[Incoming],
) -> Result<Vec<(Outcome, Option<OrderStatus>)>, StoreError> {
    db.run(async |conn| apply_invoice_events_on(conn, batch).await)
        .await
}

async fn apply_invoice_events_on(
    conn: &mut PgConnection,
    batch: &[Incoming],
) -> Result<Vec<(Outcome, Option<OrderStatus>)>, StoreError> {
    let distinct: HashSet<Uuid> = batch.iter().map(|i| i.event.order_id()).collect();
    if distinct.len() == batch.len() {
        return apply_distinct(conn, batch).await;
    }
    let mut tx = conn.begin().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for incoming in batch {
        let outcome = apply_invoice_event(&mut tx, &incoming.event)
            .instrument(incoming.delivered.span.clone())
            .await?;
        outcomes.push(outcome);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// An order's status after an `invoice.*` event, from `from` (forward only).
fn status_after(event: &Event, from: OrderStatus) -> OrderStatus {
    match event {
        Event::InvoiceIssued(_) => from.on_invoice_issued(),
        Event::InvoicePaid(_) => from.on_invoice_paid(),
        _ => from,
    }
}

/// The invoice fields of an event of this queue; `None` for any other event.
fn invoice_event(event: &Event) -> Option<(Uuid, Uuid)> {
    match event {
        Event::InvoiceIssued(e) => Some((e.order_id, e.invoice_id)),
        Event::InvoicePaid(e) => Some((e.order_id, e.invoice_id)),
        Event::InvoiceVoided(e) => Some((e.order_id, e.invoice_id)),
        _ => None,
    }
}

/// A batch whose events all concern different orders: the same rules as
/// [`apply_invoice_event`] in one statement, which PostgreSQL runs as a transaction of its
/// own — one round trip instead of five (`BEGIN`, lock the orders, record the inbox, update
/// the orders, `COMMIT`). The status rules stay in [`OrderStatus`]: each event carries the
/// status it leads to from every status, and the statement picks by the order's status
/// once it holds the order's lock (so a cancel committed meanwhile is seen).
async fn apply_distinct(
    conn: &mut PgConnection,
    batch: &[Incoming],
) -> Result<Vec<(Outcome, Option<OrderStatus>)>, StoreError> {
    let spans = actors::telemetry::batch_spans(
        "UPDATE orders",
        "UPDATE",
        batch.iter().map(|i| &i.delivered.span),
    );
    let mut outcomes: Vec<Option<(Outcome, Option<OrderStatus>)>> = Vec::with_capacity(batch.len());
    let mut applicable = Vec::new();
    for (n, incoming) in batch.iter().enumerate() {
        let event = &incoming.event;
        outcomes.push(match (invoice_event(event), event.contract_breach()) {
            (None, _) => Some((
                Outcome::Invalid(format!(
                    "{} does not belong on this queue",
                    event.routing_key()
                )),
                None,
            )),
            (Some(_), Some(reason)) => Some((Outcome::Invalid(reason), None)),
            (Some((order_id, invoice_id)), None) => {
                applicable.push((n, event, order_id, invoice_id));
                None
            }
        });
    }
    if !applicable.is_empty() {
        let leads_to = |from: OrderStatus| -> Vec<&str> {
            applicable
                .iter()
                .map(|(_, e, _, _)| status_after(e, from).as_str())
                .collect()
        };
        let rows: Vec<(i64, Option<String>, Option<String>, bool)> = sqlx::query_as(
            "WITH e AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[],
                                      $5::text[], $6::text[], $7::text[], $8::text[])
                          WITH ORDINALITY
                          AS e(event_id, event_type, order_id, invoice_id,
                               from_pending, from_invoiced, from_paid, from_canceled, n)
             ),
             known AS (
                 SELECT id, status FROM orders WHERE id = ANY($3) ORDER BY id FOR UPDATE
             ),
             fresh AS (
                 INSERT INTO inbox (event_id, event_type)
                 SELECT e.event_id, e.event_type FROM e JOIN known ON known.id = e.order_id
                 ON CONFLICT DO NOTHING
                 RETURNING event_id
             ),
             moved AS (
                 UPDATE orders o
                    SET status = CASE o.status WHEN 'pending' THEN e.from_pending
                                               WHEN 'invoiced' THEN e.from_invoiced
                                               WHEN 'paid' THEN e.from_paid
                                               WHEN 'canceled' THEN e.from_canceled
                                               ELSE o.status END,
                        invoice_id = COALESCE(o.invoice_id, e.invoice_id),
                        updated_at = $9
                   FROM e JOIN fresh ON fresh.event_id = e.event_id
                  WHERE o.id = e.order_id
                 RETURNING o.id, o.status
             )
             SELECT e.n, known.status, moved.status, fresh.event_id IS NOT NULL
               FROM e LEFT JOIN known ON known.id = e.order_id
                      LEFT JOIN fresh ON fresh.event_id = e.event_id
                      LEFT JOIN moved ON moved.id = e.order_id",
        )
        .bind(
            applicable
                .iter()
                .map(|a| a.1.event_id())
                .collect::<Vec<_>>(),
        )
        .bind(
            applicable
                .iter()
                .map(|a| a.1.routing_key())
                .collect::<Vec<_>>(),
        )
        .bind(applicable.iter().map(|a| a.2).collect::<Vec<_>>())
        .bind(applicable.iter().map(|a| a.3).collect::<Vec<_>>())
        .bind(leads_to(OrderStatus::Pending))
        .bind(leads_to(OrderStatus::Invoiced))
        .bind(leads_to(OrderStatus::Paid))
        .bind(leads_to(OrderStatus::Canceled))
        .bind(actors::db::now())
        .fetch_all(conn)
        .await?;
        for (n, before, after, first) in rows {
            let Some(&(i, _, order_id, _)) =
                usize::try_from(n - 1).ok().and_then(|n| applicable.get(n))
            else {
                continue;
            };
            outcomes[i] = Some(match (before, first) {
                (None, _) => (
                    Outcome::Invalid(format!("event for unknown order {order_id}")),
                    None,
                ),
                (Some(_), false) => (Outcome::Duplicate, None),
                (Some(before), true) => {
                    let after = after.as_deref().and_then(OrderStatus::parse);
                    (Outcome::Applied, after.filter(|a| a.as_str() != before))
                }
            });
        }
    }
    drop(spans);
    Ok(outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                (
                    Outcome::Invalid("the store gave no answer for this event".into()),
                    None,
                )
            })
        })
        .collect())
}

#[tracing::instrument(target = TRACE_ONLY, name = "UPDATE orders", skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE"))]
async fn apply_invoice_event(
    tx: &mut PgConnection,
    event: &Event,
) -> Result<(Outcome, Option<OrderStatus>), StoreError> {
    let Some((order_id, invoice_id)) = invoice_event(event) else {
        return Ok((
            Outcome::Invalid(format!(
                "{} does not belong on this queue",
                event.routing_key()
            )),
            None,
        ));
    };
    if let Some(reason) = event.contract_breach() {
        return Ok((Outcome::Invalid(reason), None));
    }
    let Some(order) = lock_order(&mut *tx, order_id).await? else {
        return Ok((
            Outcome::Invalid(format!("event for unknown order {order_id}")),
            None,
        ));
    };
    if !outbox::first_delivery(&mut *tx, event.event_id(), event.routing_key()).await? {
        return Ok((Outcome::Duplicate, None));
    }
    let next = status_after(event, order.status);
    sqlx::query("UPDATE orders SET status = $2, invoice_id = COALESCE(invoice_id, $3), updated_at = $4 WHERE id = $1")
        .bind(order_id)
        .bind(next.as_str())
        .bind(invoice_id)
        .bind(actors::db::now())
        .execute(&mut *tx)
        .await?;
    Ok((Outcome::Applied, (next != order.status).then_some(next)))
}

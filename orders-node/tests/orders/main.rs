//! orders-node against the real PostgreSQL and RabbitMQ, through real HTTP. Each test has
//! its own database and vhost (`testkit::TestEnv`), so they run in parallel.

#![allow(clippy::unwrap_used)]

mod batching;
mod cancel;
mod events;
mod hostile;
mod idempotency;
mod listing;
mod operations;
mod stack;
mod system;
mod traces;
mod validation;

use orders_node::{OrdersConfig, OrdersNode};
use testkit::{Client, TestEnv};

/// Starts an orders-node in `env` (with `extra` variables on top of the env's).
pub async fn spawn_orders(env: &TestEnv, extra: &[(&str, &str)]) -> (OrdersNode, Client) {
    let mut vars = env.vars("orders");
    for (k, v) in extra {
        vars.set(*k, *v);
    }
    let node = OrdersNode::build(OrdersConfig::from_vars(&vars).unwrap())
        .await
        .expect("orders-node starts");
    let client = Client::new(node.addr());
    if !extra.iter().any(|(k, _)| *k == "AMQP_URL") {
        client.wait_broker_connected().await;
    }
    (node, client)
}

/// Creates an order and returns its body.
pub async fn create_order(client: &Client) -> serde_json::Value {
    let reply = client.post_json("/orders", &testkit::order_body()).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.body
}

/// Holds `order_id`'s row lock and sends a cancel for it, returning once that cancel waits
/// on the lock: the store worker serving it stays parked — and requests queue behind it —
/// until the returned transaction is rolled back; the handle gives the cancel's answer.
pub async fn park_a_cancel(
    env: &TestEnv,
    c: &Client,
    db: &sqlx::PgPool,
    order_id: &str,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    tokio::task::JoinHandle<testkit::Reply>,
) {
    let mut holder = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE id = $1::uuid FOR UPDATE")
        .bind(order_id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let cancel = {
        let c = c.clone();
        let path = format!("/orders/{order_id}/cancel");
        tokio::spawn(async move { c.post_empty(&path).await })
    };
    env.wait_for_lock_waiters("orders", 1).await;
    (holder, cancel)
}

//! invoices-node against the real PostgreSQL and RabbitMQ: events in through the broker,
//! HTTP out. Each test has its own database and vhost.

#![allow(clippy::unwrap_used)]

mod batching;
mod config;
mod consuming;
mod crash;
mod http_api;

use chrono::Utc;
use contracts::{Event, LineItem, OrderCanceled, OrderCreated};
use invoices_node::{InvoicesConfig, InvoicesNode};
use testkit::{Client, TestEnv};
use uuid::Uuid;

pub async fn spawn_invoices(env: &TestEnv, extra: &[(&str, &str)]) -> (InvoicesNode, Client) {
    let mut vars = env.vars("invoices");
    for (k, v) in extra {
        vars.set(*k, *v);
    }
    let node = InvoicesNode::build(InvoicesConfig::from_vars(&vars).unwrap())
        .await
        .expect("invoices-node starts");
    let client = Client::new(node.addr());
    client.wait_broker_connected().await;
    (node, client)
}

pub fn order_created(order_id: Uuid) -> Event {
    Event::OrderCreated(OrderCreated {
        event_id: Uuid::new_v4(),
        order_id,
        customer_id: Uuid::new_v4(),
        currency: "EUR".into(),
        items: vec![LineItem {
            sku: "PEN-1".into(),
            quantity: 3,
            unit_price_cents: 250,
        }],
        total_cents: 750,
        created_at: Utc::now(),
    })
}

pub fn order_canceled(order_id: Uuid) -> Event {
    Event::OrderCanceled(OrderCanceled {
        event_id: Uuid::new_v4(),
        order_id,
        canceled_at: Utc::now(),
        reason: None,
    })
}

/// The invoices of an order, as the API lists them.
pub async fn invoices_of(c: &Client, order_id: Uuid) -> Vec<serde_json::Value> {
    c.get(&format!("/invoices?order_id={order_id}")).await.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

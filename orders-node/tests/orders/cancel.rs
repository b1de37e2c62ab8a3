//! POST /orders/{id}/cancel.

use std::time::Duration;

use contracts::{Event, InvoicePaid};
use testkit::{TestEnv, eventually};

use crate::{create_order, spawn_orders};

#[tokio::test]
async fn cancel_is_idempotent_emits_one_event_and_a_paid_order_refuses() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let mut events = amqp
        .watch(contracts::topology::ORDERS_EXCHANGE, "order.canceled")
        .await;
    let (node, c) = spawn_orders(&env, &[]).await;

    let order = create_order(&c).await;
    let id = order["id"].as_str().unwrap();
    let r = c
        .post_json(
            &format!("/orders/{id}/cancel"),
            &serde_json::json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "canceled");
    let again = c.post_empty(&format!("/orders/{id}/cancel")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["status"], "canceled");

    let delivery = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("order.canceled published")
        .unwrap();
    let Event::OrderCanceled(e) = contracts::decode("order.canceled", &delivery.data).unwrap()
    else {
        panic!("wrong event")
    };
    assert_eq!(e.order_id.to_string(), id);
    assert_eq!(e.reason.as_deref(), Some("changed my mind"));
    assert!(
        tokio::time::timeout(Duration::from_millis(700), events.recv())
            .await
            .is_err(),
        "the repeat emitted nothing"
    );

    // A paid order cannot be canceled.
    let paid = create_order(&c).await;
    let paid_id: uuid::Uuid = paid["id"].as_str().unwrap().parse().unwrap();
    amqp.publish_event(&Event::InvoicePaid(InvoicePaid {
        event_id: uuid::Uuid::new_v4(),
        invoice_id: uuid::Uuid::new_v4(),
        order_id: paid_id,
        paid_at: chrono::Utc::now(),
    }))
    .await;
    eventually("order paid", Duration::from_secs(10), || async {
        (c.get(&format!("/orders/{paid_id}")).await.body["status"] == "paid").then_some(())
    })
    .await;
    c.post_empty(&format!("/orders/{paid_id}/cancel"))
        .await
        .problem(409);
    // A bad cancel body is a 422, not a silent ignore.
    let other = create_order(&c).await;
    c.post_json(
        &format!("/orders/{}/cancel", other["id"].as_str().unwrap()),
        &serde_json::json!({"why": 1}),
    )
    .await
    .problem(422);
    node.shutdown().await;
}

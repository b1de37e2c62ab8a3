//! The invoices HTTP API: get, list, pay, and its error answers.

use std::time::Duration;

use reqwest::Method;
use testkit::{TestEnv, eventually};
use uuid::Uuid;

use contracts::topology;

use crate::{invoices_of, order_canceled, order_created, spawn_invoices};

#[tokio::test]
async fn pay_is_idempotent_emits_one_event_and_a_void_invoice_refuses() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let mut paid_events = amqp
        .watch(topology::INVOICES_EXCHANGE, "invoice.paid")
        .await;
    let (node, c) = spawn_invoices(&env, &[]).await;
    let order_id = Uuid::new_v4();
    amqp.publish_event(&order_created(order_id)).await;
    let inv = eventually("issued", Duration::from_secs(10), || async {
        invoices_of(&c, order_id).await.pop()
    })
    .await;
    let id = inv["id"].as_str().unwrap();

    let got = c.get(&format!("/invoices/{id}")).await;
    assert_eq!((got.status, &got.body), (200, &inv));
    let paid = c.post_empty(&format!("/invoices/{id}/pay")).await;
    assert_eq!(paid.status, 200, "{}", paid.text);
    assert_eq!(paid.body["status"], "paid");
    let again = c.post_empty(&format!("/invoices/{id}/pay")).await;
    assert_eq!(
        (again.status, &again.body["paid_at"]),
        (200, &paid.body["paid_at"])
    );
    tokio::time::timeout(Duration::from_secs(10), paid_events.recv())
        .await
        .expect("invoice.paid")
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(700), paid_events.recv())
            .await
            .is_err(),
        "one event for two pays"
    );

    let other = Uuid::new_v4();
    amqp.publish_event(&order_created(other)).await;
    eventually("issued", Duration::from_secs(10), || async {
        invoices_of(&c, other).await.pop()
    })
    .await;
    amqp.publish_event(&order_canceled(other)).await;
    let void = eventually("void", Duration::from_secs(10), || async {
        invoices_of(&c, other)
            .await
            .pop()
            .filter(|i| i["status"] == "void")
    })
    .await;
    c.post_empty(&format!("/invoices/{}/pay", void["id"].as_str().unwrap()))
        .await
        .problem(409);
    node.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_problem_json_and_lists_page() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let (node, c) = spawn_invoices(&env, &[]).await;
    c.get("/invoices/123").await.problem(400);
    c.post_empty("/invoices/123/pay").await.problem(400);
    c.get(&format!("/invoices/{}", Uuid::new_v4()))
        .await
        .problem(404);
    c.post_empty(&format!("/invoices/{}/pay", Uuid::new_v4()))
        .await
        .problem(404);
    c.send(c.request(Method::POST, "/invoices"))
        .await
        .problem(405);
    c.send(c.request(Method::DELETE, &format!("/invoices/{}", Uuid::new_v4())))
        .await
        .problem(405);
    c.get(&format!("/invoices/{}/pay", Uuid::new_v4()))
        .await
        .problem(405);
    c.get("/orders").await.problem(404);
    c.get("/invoices?status=open").await.problem(422);
    c.get("/invoices?order_id=x").await.problem(422);
    c.get("/invoices?limit=-1").await.problem(422);
    c.get("/invoices?cursor=%%%").await.problem(400);
    for crafted in testkit::CRAFTED_CURSORS {
        c.get(&format!("/invoices?cursor={crafted}"))
            .await
            .problem(400);
    }

    for _ in 0..5 {
        amqp.publish_event(&order_created(Uuid::new_v4())).await;
    }
    eventually("five invoices", Duration::from_secs(10), || async {
        (c.get("/invoices").await.body["items"]
            .as_array()
            .map(Vec::len)
            == Some(5))
        .then_some(())
    })
    .await;
    let first = c.get("/invoices?limit=2").await;
    let second = c
        .get(&format!(
            "/invoices?limit=2&cursor={}",
            first.body["next_cursor"].as_str().unwrap()
        ))
        .await;
    let third = c
        .get(&format!(
            "/invoices?limit=2&cursor={}",
            second.body["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(third.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(third.body["next_cursor"], serde_json::Value::Null);
    let issued = c.get("/invoices?status=issued").await;
    assert_eq!(issued.body["items"].as_array().unwrap().len(), 5);
    node.shutdown().await;
}

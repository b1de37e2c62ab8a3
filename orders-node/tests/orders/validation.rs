//! Every validation rule and status code of api.md answers with problem+json.

use reqwest::Method;
use serde_json::json;
use testkit::TestEnv;

use crate::spawn_orders;

#[tokio::test]
async fn bad_requests_get_the_status_api_md_names() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;

    // Malformed JSON: 400.
    let r = c
        .send(
            c.request(Method::POST, "/orders")
                .header("content-type", "application/json")
                .body("{\"customer_id\": "),
        )
        .await;
    r.problem(400);
    // Well-formed JSON that repeats a key: 422, not "the last one wins".
    let r = c
        .send(
            c.request(reqwest::Method::POST, "/orders")
                .header("content-type", "application/json")
                .body(
                    r#"{"customer_id":"5b3f8f3e-8a4e-4a49-9b63-0c8f7f4d2a11","currency":"BRL","currency":"USD","items":[{"sku":"A","quantity":1,"unit_price_cents":1}]}"#,
                ),
        )
        .await;
    assert!(
        r.problem(422)["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("currency")
    );
    // No or wrong Content-Type on a body: 415.
    let r = c
        .send(
            c.request(Method::POST, "/orders")
                .body(testkit::order_body().to_string()),
        )
        .await;
    r.problem(415);
    let r = c
        .send(
            c.request(Method::POST, "/orders")
                .header("content-type", "text/plain")
                .body(testkit::order_body().to_string()),
        )
        .await;
    r.problem(415);
    // Body over 64 KiB: 413 (declared or streamed).
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    let r = c
        .send(
            c.request(Method::POST, "/orders")
                .header("content-type", "application/json")
                .body(big.clone()),
        )
        .await;
    r.problem(413);
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let r = c
        .send(
            c.request(Method::POST, "/orders")
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await;
    r.problem(413);

    // Schema violations: 422 with field paths.
    let cases = [
        (
            json!({"currency": "BRL", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
            "customer_id",
        ),
        (
            json!({"customer_id": "x", "currency": "BRL", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
            "customer_id",
        ),
        (
            json!({"customer_id": uuid::Uuid::new_v4(), "currency": "BR", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
            "currency",
        ),
        (
            json!({"customer_id": uuid::Uuid::new_v4(), "currency": "BRL", "items": []}),
            "items",
        ),
        (
            json!({"customer_id": uuid::Uuid::new_v4(), "currency": "BRL", "items": [{"sku": "A B", "quantity": 1, "unit_price_cents": 1}]}),
            "items[0].sku",
        ),
        (
            json!({"customer_id": uuid::Uuid::new_v4(), "currency": "BRL", "items": [{"sku": "A", "quantity": 10001, "unit_price_cents": 1}]}),
            "items[0].quantity",
        ),
        (
            json!({"customer_id": uuid::Uuid::new_v4(), "currency": "BRL", "items": [{"sku": "A", "quantity": "1", "unit_price_cents": 1}]}),
            "items[0].quantity",
        ),
        (
            json!({"customer_id": uuid::Uuid::new_v4(), "currency": "BRL", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": -5}]}),
            "items[0].unit_price_cents",
        ),
        (
            json!({"customer_id": uuid::Uuid::new_v4(), "currency": "BRL", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1, "discount": 1}]}),
            "items[0].discount",
        ),
        (
            json!({"customer_id": uuid::Uuid::new_v4(), "currency": "BRL", "total_cents": 1, "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
            "total_cents",
        ),
        (json!([1, 2]), ""),
    ];
    for (body, field) in cases {
        let r = c.post_json("/orders", &body).await;
        let p = r.problem(422);
        let fields: Vec<&str> = p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&field),
            "{field} not reported for {body}: {}",
            r.text
        );
    }
    // A bad Idempotency-Key header: 400.
    let r = c
        .send(
            c.request(Method::POST, "/orders")
                .header("idempotency-key", "has space")
                .json(&testkit::order_body()),
        )
        .await;
    r.problem(400);

    // Path ids, unknown ids, routes and methods.
    c.get("/orders/not-a-uuid").await.problem(400);
    c.post_empty("/orders/not-a-uuid/cancel").await.problem(400);
    c.get(&format!("/orders/{}", uuid::Uuid::new_v4()))
        .await
        .problem(404);
    c.post_empty(&format!("/orders/{}/cancel", uuid::Uuid::new_v4()))
        .await
        .problem(404);
    c.get("/nothing/here").await.problem(404);
    let r = c.send(c.request(Method::DELETE, "/orders")).await;
    r.problem(405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    c.send(c.request(Method::PUT, &format!("/orders/{}", uuid::Uuid::new_v4())))
        .await
        .problem(405);
    c.get(&format!("/orders/{}/cancel", uuid::Uuid::new_v4()))
        .await
        .problem(405);
    c.send(c.request(Method::POST, "/health"))
        .await
        .problem(405);

    // List parameters.
    c.get("/orders?limit=0").await.problem(422);
    c.get("/orders?limit=201").await.problem(422);
    c.get("/orders?limit=ten").await.problem(422);
    c.get("/orders?status=shipped").await.problem(422);
    c.get("/orders?customer_id=nope").await.problem(422);
    c.get("/orders?colour=red").await.problem(422);
    c.get("/orders?cursor=garbage").await.problem(400);

    // Nothing above created anything.
    let list = c.get("/orders").await;
    assert_eq!(
        list.body["items"].as_array().unwrap().len(),
        0,
        "{}",
        list.text
    );
    node.shutdown().await;
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_callers() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;
    let generated = c.get("/orders").await;
    assert!(
        generated
            .header("x-request-id")
            .is_some_and(|id| !id.is_empty())
    );
    let echoed = c
        .send(
            c.request(Method::GET, "/orders/nope")
                .header("x-request-id", "req-123"),
        )
        .await;
    assert_eq!(echoed.header("x-request-id"), Some("req-123"));
    let kong = c
        .send(
            c.request(Method::GET, "/orders")
                .header("kong-request-id", "kong-9"),
        )
        .await;
    assert_eq!(kong.header("x-request-id"), Some("kong-9"));
    node.shutdown().await;
}

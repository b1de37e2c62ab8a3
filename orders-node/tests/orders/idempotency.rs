//! Idempotency-Key: replay, mismatch, in flight.

use reqwest::Method;
use testkit::TestEnv;

use crate::spawn_orders;

/// `POST /orders` with an `Idempotency-Key`.
async fn post_with_key(c: &testkit::Client, key: &str, body: &serde_json::Value) -> testkit::Reply {
    c.send(
        c.request(Method::POST, "/orders")
            .header("idempotency-key", key)
            .json(body),
    )
    .await
}

#[tokio::test]
async fn a_repeated_key_replays_the_original_and_creates_nothing() {
    let env = TestEnv::new();
    // Many pooled connections: a transaction left to roll back in the background would keep
    // the key locked on a connection the next request does not get.
    let (node, c) = spawn_orders(&env, &[("DATABASE_POOL_SIZE", "16")]).await;
    let body = testkit::order_body();
    let first = post_with_key(&c, "key-1", &body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);

    let again = post_with_key(&c, "key-1", &body).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), first.header("location"));

    // Back-to-back repeats: each one answers only after its transaction (and the key's lock)
    // has ended, so the next one is a replay too, never a spurious "in progress".
    for _ in 0..20 {
        let again = post_with_key(&c, "key-1", &body).await;
        assert_eq!(
            (again.status, again.header("idempotent-replayed")),
            (201, Some("true")),
            "{}",
            again.text
        );
    }

    // Same key, different body: 422, and still one order.
    let mut other = body.clone();
    other["currency"] = "USD".into();
    let mismatch = post_with_key(&c, "key-1", &other).await;
    mismatch.problem(422);
    let list = c.get("/orders").await;
    assert_eq!(
        list.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        list.text
    );

    // Without a key, the same body makes a second order.
    assert_eq!(c.post_json("/orders", &body).await.status, 201);
    assert_eq!(
        c.get("/orders").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_key_whose_first_request_is_in_flight_is_409() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;
    // Hold the key's lock the way an in-flight first request does.
    let pool = env.pg(&env.database("orders")).await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind("busy-key")
        .execute(&mut *holder)
        .await
        .unwrap();

    let r = post_with_key(&c, "busy-key", &testkit::order_body()).await;
    r.problem(409);

    holder.rollback().await.unwrap();
    let r = post_with_key(&c, "busy-key", &testkit::order_body()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    node.shutdown().await;
}

//! GET /orders: newest first, keyset pagination, filters.

use std::collections::HashSet;

use testkit::TestEnv;

use crate::spawn_orders;

#[tokio::test]
async fn pages_walk_every_order_once_newest_first_and_filters_apply() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;
    let customer = uuid::Uuid::new_v4().to_string();
    let mut created = Vec::new();
    for i in 0..7 {
        let mut body = testkit::order_body();
        if i % 2 == 0 {
            body["customer_id"] = customer.clone().into();
        }
        let r = c.post_json("/orders", &body).await;
        assert_eq!(r.status, 201);
        created.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/orders?limit=3".to_owned(),
            Some(c) => format!("/orders?limit=3&cursor={c}"),
        };
        let page = c.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|o| o["id"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);

    let mine = c.get(&format!("/orders?customer_id={customer}")).await;
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 4);
    let pending = c.get("/orders?status=pending&limit=200").await;
    assert_eq!(pending.body["items"].as_array().unwrap().len(), 7);
    let canceled = c.get("/orders?status=canceled").await;
    assert_eq!(canceled.body["items"].as_array().unwrap().len(), 0);
    assert_eq!(canceled.body["next_cursor"], serde_json::Value::Null);
    for crafted in testkit::CRAFTED_CURSORS {
        c.get(&format!("/orders?cursor={crafted}"))
            .await
            .problem(400);
    }

    let one = c.get(&format!("/orders/{}", created[0])).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["id"], created[0].as_str());
    assert_eq!(one.body["total_cents"], 3000);
    node.shutdown().await;
}

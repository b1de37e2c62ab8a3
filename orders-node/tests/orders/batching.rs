//! Group commit at intake: concurrent creates share one transaction, and one bad row
//! neither fails nor duplicates its batchmates.

use std::time::Duration;

use testkit::TestEnv;

use crate::{create_order, park_a_cancel, spawn_orders};

#[tokio::test]
async fn a_failing_row_in_a_group_fails_alone_and_its_batchmates_commit_once() {
    let env = TestEnv::new();
    // One store worker taking up to 64 jobs: everything that waits goes into one group.
    // Published rows are kept, so that the events written can be counted below.
    let (node, c) = spawn_orders(
        &env,
        &[
            ("STORE_WORKERS", "1"),
            ("STORE_BATCH_SIZE", "64"),
            ("OUTBOX_RETENTION", "1h"),
        ],
    )
    .await;
    let db = env.pg(&env.database("orders")).await;
    let poison = uuid::Uuid::new_v4();
    // A real database failure for one row only.
    env.reject_rows("orders", "orders", "customer_id", &poison.to_string())
        .await;

    // Park the only worker on a row lock, so the creates below pile up behind it.
    let blocker = create_order(&c).await["id"].as_str().unwrap().to_owned();
    let (holder, parked) = park_a_cancel(&env, &c, &db, &blocker).await;

    let mut bodies: Vec<serde_json::Value> = (0..30).map(|_| testkit::order_body()).collect();
    bodies[17]["customer_id"] = serde_json::json!(poison.to_string());
    let sends = bodies.iter().map(|b| {
        let c = c.clone();
        let b = b.clone();
        async move { c.post_json("/orders", &b).await }
    });
    let replies = {
        let all = tokio::spawn(futures_util::future::join_all(sends.collect::<Vec<_>>()));
        // Every create is queued behind the parked worker before it is released.
        tokio::time::sleep(Duration::from_millis(500)).await;
        holder.rollback().await.unwrap();
        all.await.unwrap()
    };
    assert_eq!(parked.await.unwrap().status, 200);

    for (i, reply) in replies.iter().enumerate() {
        if i == 17 {
            reply.problem(500);
        } else {
            assert_eq!(reply.status, 201, "request {i}: {}", reply.text);
        }
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    let created_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE routing_key = 'order.created'")
            .fetch_one(&db)
            .await
            .unwrap();
    // 29 good ones plus the blocker, each exactly once, with exactly one event each.
    assert_eq!((orders, created_events), (30, 30));
    for (i, reply) in replies.iter().enumerate().filter(|(i, _)| *i != 17) {
        let id = reply.body["id"].as_str().unwrap();
        assert_eq!(
            c.get(&format!("/orders/{id}")).await.status,
            200,
            "request {i}"
        );
    }
    db.close().await;
    node.shutdown().await;
}

/// A batch of `invoice.*` events for different orders is one statement; each event still
/// gets its own outcome, and only the fresh ones for known orders change anything.
#[tokio::test]
async fn a_batch_of_invoice_events_gives_each_event_its_own_outcome() {
    use actors::amqp::Outcome;
    use contracts::{Event, InvoicePaid};
    use orders_node::domain::OrderStatus;
    use testkit::incoming;

    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;
    let db = env.pg(&env.database("orders")).await;
    let id =
        |order: serde_json::Value| -> uuid::Uuid { order["id"].as_str().unwrap().parse().unwrap() };
    let (pending, canceled, invoiced) = (
        id(create_order(&c).await),
        id(create_order(&c).await),
        id(create_order(&c).await),
    );
    assert_eq!(
        c.post_empty(&format!("/orders/{canceled}/cancel"))
            .await
            .status,
        200
    );
    let now = chrono::Utc::now();
    let issued = |order_id| crate::events::issued(order_id, uuid::Uuid::new_v4());
    let connections = actors::db::Connections::new(db.clone());
    let seen_before = issued(invoiced);
    let first = orders_node::store::apply_invoice_events(&connections, &[incoming(&seen_before)])
        .await
        .unwrap();
    assert_eq!(first, vec![(Outcome::Applied, Some(OrderStatus::Invoiced))]);

    let unknown = uuid::Uuid::new_v4();
    let batch = [
        issued(pending),
        issued(canceled),
        seen_before.clone(),
        issued(unknown),
        Event::InvoicePaid(InvoicePaid {
            event_id: uuid::Uuid::new_v4(),
            invoice_id: uuid::Uuid::new_v4(),
            order_id: uuid::Uuid::new_v4(),
            paid_at: now,
        }),
    ];
    let outcomes = orders_node::store::apply_invoice_events(
        &connections,
        &batch.iter().map(incoming).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(outcomes[0], (Outcome::Applied, Some(OrderStatus::Invoiced)));
    // Canceled is terminal: applied (the invoice id is recorded), the status stays.
    assert_eq!(outcomes[1], (Outcome::Applied, None));
    assert_eq!(outcomes[2], (Outcome::Duplicate, None));
    for (n, unknown) in [(3, unknown), (4, batch[4].order_id())] {
        assert_eq!(
            outcomes[n],
            (
                Outcome::Invalid(format!("event for unknown order {unknown}")),
                None
            )
        );
    }
    let statuses: Vec<(uuid::Uuid, String, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT id, status, invoice_id FROM orders ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    let status_of = |order| statuses.iter().find(|s| s.0 == order).unwrap();
    assert_eq!(status_of(pending).1, "invoiced");
    assert_eq!(status_of(canceled).1, "canceled");
    assert!(status_of(canceled).2.is_some());
    assert_eq!(status_of(invoiced).1, "invoiced");
    // Inbox rows: the two events of the first call and of this batch that were applied;
    // nothing for the unknown orders, nothing twice.
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(inbox, 3);
    drop(connections);
    db.close().await;
    node.shutdown().await;
}

//! order.* events: exactly one invoice per order, voiding, poison messages.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use testkit::{TestEnv, eventually, metric};
use uuid::Uuid;

use contracts::{Event, topology};

use crate::{invoices_of, order_canceled, order_created, spawn_invoices};

/// Waits until `dlq` holds `n` messages and the node has counted `n` dead letters: the
/// copy reaches the DLQ a moment before the node counts it.
async fn wait_dead_lettered(
    amqp: &testkit::Amqp,
    c: &testkit::Client,
    dlq: &str,
    n: u32,
    within: Duration,
) {
    eventually("dead letters in the DLQ, and counted", within, || async {
        let m = c.get("/metrics").await.text;
        let counted = metric(
            &m,
            "messages_consumed_total",
            &[("outcome", "dead_lettered")],
        );
        (amqp.ready_count(dlq).await == n && counted == Some(f64::from(n))).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_order_gets_one_invoice_and_an_invoice_issued_event_with_the_contract_envelope() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let mut out = amqp.watch(topology::INVOICES_EXCHANGE, "invoice.*").await;
    let (node, c) = spawn_invoices(&env, &[("PAYMENT_TERMS", "7d")]).await;

    let order_id = Uuid::new_v4();
    let created = order_created(order_id);
    amqp.publish_event(&created).await;
    let delivery = tokio::time::timeout(Duration::from_secs(10), out.recv())
        .await
        .expect("invoice.issued published")
        .unwrap();

    let props = &delivery.properties;
    assert_eq!(delivery.routing_key.as_str(), "invoice.issued");
    assert_eq!(
        props.kind().as_ref().map(|s| s.as_str()),
        Some("invoice.issued")
    );
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/msgpack")
    );
    assert_eq!(
        props.app_id().as_ref().map(|s| s.as_str()),
        Some("invoices-node")
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    assert!(props.timestamp().is_some());
    let headers = props.headers().as_ref().unwrap().inner();
    assert_eq!(
        headers.get("contract-version"),
        Some(&AMQPValue::LongLongInt(1))
    );
    let Event::InvoiceIssued(issued) = contracts::decode("invoice.issued", &delivery.data).unwrap()
    else {
        panic!("not invoice.issued")
    };
    assert_eq!(
        props.message_id().as_ref().map(|s| s.to_string()),
        Some(issued.event_id.to_string())
    );
    assert_eq!(issued.order_id, order_id);
    assert_eq!(issued.amount_cents, 750);
    assert_eq!(issued.currency, "EUR");
    assert_eq!(issued.due_at - issued.issued_at, chrono::Duration::days(7));

    let invoices = invoices_of(&c, order_id).await;
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0]["id"], issued.invoice_id.to_string());
    assert_eq!(invoices[0]["number"], issued.number);
    assert_eq!(invoices[0]["status"], "issued");
    assert_eq!(invoices[0]["paid_at"], serde_json::Value::Null);
    node.shutdown().await;
}

#[tokio::test]
async fn redelivered_order_created_makes_exactly_one_invoice() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let (node, c) = spawn_invoices(&env, &[]).await;
    let order_id = Uuid::new_v4();
    let created = order_created(order_id);
    for _ in 0..5 {
        amqp.publish_event(&created).await;
    }
    // Even a second order.created for the same order under another event id.
    amqp.publish_event(&order_created(order_id)).await;
    eventually(
        "all six deliveries handled",
        Duration::from_secs(10),
        || async {
            let m = c.get("/metrics").await.text;
            let processed =
                metric(&m, "messages_consumed_total", &[("outcome", "processed")]).unwrap_or(0.0);
            let duplicate =
                metric(&m, "messages_consumed_total", &[("outcome", "duplicate")]).unwrap_or(0.0);
            (processed + duplicate == 6.0).then_some(())
        },
    )
    .await;
    assert_eq!(invoices_of(&c, order_id).await.len(), 1);
    let m = c.get("/metrics").await.text;
    assert_eq!(
        metric(&m, "messages_consumed_total", &[("outcome", "duplicate")]),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &m,
            "domain_events_total",
            &[("entity", "invoice"), ("outcome", "issued")]
        ),
        Some(1.0)
    );

    // Numbers are unique and increasing.
    let mut numbers = Vec::new();
    for _ in 0..3 {
        let id = Uuid::new_v4();
        amqp.publish_event(&order_created(id)).await;
        let inv = eventually("invoice", Duration::from_secs(10), || async {
            invoices_of(&c, id).await.pop()
        })
        .await;
        numbers.push(inv["number"].as_str().unwrap().to_owned());
    }
    let mut sorted = numbers.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, numbers, "increasing and unique: {numbers:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn poison_messages_land_in_the_dlq_and_the_node_goes_on() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let (node, c) = spawn_invoices(&env, &[]).await;
    let typed = |t: &str| BasicProperties::default().with_type(t.into());

    amqp.publish(
        topology::ORDERS_EXCHANGE,
        "order.created",
        b"\x93not a map",
        typed("order.created"),
    )
    .await;
    amqp.publish(
        topology::ORDERS_EXCHANGE,
        "order.created",
        &rmp_serde::to_vec_named(&serde_json::json!({"event_id": Uuid::new_v4().to_string()}))
            .unwrap(),
        typed("order.created"),
    )
    .await;
    amqp.publish(
        topology::ORDERS_EXCHANGE,
        "order.shipped",
        &[0x80],
        typed("order.shipped"),
    )
    .await;
    let created = order_created(Uuid::new_v4());
    amqp.publish(
        topology::ORDERS_EXCHANGE,
        "order.created",
        &contracts::encode(&created),
        typed("order.created").with_message_id(Uuid::new_v4().to_string().into()),
    )
    .await;
    amqp.publish(
        topology::ORDERS_EXCHANGE,
        "order.created",
        &vec![0u8; contracts::MAX_MESSAGE_BYTES + 1],
        typed("order.created"),
    )
    .await;
    let mut bad_money = order_created(Uuid::new_v4());
    if let contracts::Event::OrderCreated(e) = &mut bad_money {
        e.currency = "euro".into();
    }
    amqp.publish_event(&bad_money).await;

    let dlq = topology::dead_letter_queue(topology::INVOICES_NODE_QUEUE);
    wait_dead_lettered(&amqp, &c, &dlq, 6, Duration::from_secs(15)).await;
    assert_eq!(
        amqp.ready_count(topology::INVOICES_NODE_QUEUE).await,
        0,
        "nothing requeued in a loop"
    );

    let order_id = Uuid::new_v4();
    amqp.publish_event(&order_created(order_id)).await;
    eventually(
        "a good message after the poison",
        Duration::from_secs(10),
        || async { invoices_of(&c, order_id).await.pop() },
    )
    .await;
    assert_eq!(c.get("/health/ready").await.status, 200);
    node.shutdown().await;
}

/// Takes `order`'s lock in `tx`, as the node does before applying an event of that order
/// (the lock is held until `tx` ends).
async fn lock_order(tx: &mut sqlx::PgConnection, order: Uuid) {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
        .bind(order)
        .execute(tx)
        .await
        .unwrap();
}

/// The next `invoice.voided` a watch receives, decoded; fails the test after 10 s.
async fn next_voided(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<lapin::message::Delivery>,
    what: &str,
) -> contracts::InvoiceVoided {
    let d = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect(what)
        .unwrap();
    let Event::InvoiceVoided(e) = contracts::decode("invoice.voided", &d.data).unwrap() else {
        panic!("{what}: not an invoice.voided")
    };
    e
}

#[tokio::test]
async fn cancel_voids_an_issued_invoice_keeps_a_paid_one_and_precedes_a_late_create() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let mut voided_events = amqp
        .watch(topology::INVOICES_EXCHANGE, "invoice.voided")
        .await;
    let (node, c) = spawn_invoices(&env, &[]).await;

    // Issued, then canceled: void, and invoice.voided.
    let a = Uuid::new_v4();
    amqp.publish_event(&order_created(a)).await;
    eventually("issued", Duration::from_secs(10), || async {
        invoices_of(&c, a).await.pop()
    })
    .await;
    amqp.publish_event(&order_canceled(a)).await;
    let voided = eventually("void", Duration::from_secs(10), || async {
        invoices_of(&c, a)
            .await
            .pop()
            .filter(|i| i["status"] == "void")
    })
    .await;
    let e = next_voided(&mut voided_events, "invoice.voided").await;
    assert_eq!(e.invoice_id.to_string(), voided["id"].as_str().unwrap());

    // Paid, then canceled: stays paid.
    let b = Uuid::new_v4();
    amqp.publish_event(&order_created(b)).await;
    let inv = eventually("issued", Duration::from_secs(10), || async {
        invoices_of(&c, b).await.pop()
    })
    .await;
    assert_eq!(
        c.post_empty(&format!("/invoices/{}/pay", inv["id"].as_str().unwrap()))
            .await
            .status,
        200
    );
    amqp.publish_event(&order_canceled(b)).await;
    eventually("cancel handled", Duration::from_secs(10), || async {
        let m = c.get("/metrics").await.text;
        (metric(
            &m,
            "messages_consumed_total",
            &[("type", "order.canceled"), ("outcome", "processed")],
        ) == Some(2.0))
        .then_some(())
    })
    .await;
    assert_eq!(invoices_of(&c, b).await[0]["status"], "paid");

    // Canceled before created: one order's events are handled in delivery order, so the
    // invoice is born void and is never issued (not even for a moment).
    let mut issued_events = amqp
        .watch(topology::INVOICES_EXCHANGE, "invoice.issued")
        .await;
    let late = Uuid::new_v4();
    amqp.publish_event(&order_canceled(late)).await;
    amqp.publish_event(&order_created(late)).await;
    let inv = eventually("born void", Duration::from_secs(10), || async {
        invoices_of(&c, late).await.pop()
    })
    .await;
    assert_eq!(inv["status"], "void");
    let e = next_voided(&mut voided_events, "the late order's invoice.voided").await;
    assert_eq!(e.order_id, late);
    while let Ok(d) = issued_events.try_recv() {
        let Event::InvoiceIssued(e) = contracts::decode("invoice.issued", &d.data).unwrap() else {
            panic!()
        };
        assert_ne!(e.order_id, late, "the late order's invoice was issued");
    }
    c.post_empty(&format!("/invoices/{}/pay", inv["id"].as_str().unwrap()))
        .await
        .problem(409);
    node.shutdown().await;
}

/// Another replica handling the order's cancel holds the order's lock while this node's
/// create waits for it: once that cancel commits, the create must see it (its snapshot is
/// taken after the lock) and make the invoice void, never issue it.
#[tokio::test]
async fn a_create_that_waited_for_a_cancel_on_another_replica_sees_it_and_is_born_void() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let mut voided_events = amqp
        .watch(topology::INVOICES_EXCHANGE, "invoice.voided")
        .await;
    let (node, c) = spawn_invoices(&env, &[]).await;
    let db = env.pg(&env.database("invoices")).await;
    let order = Uuid::new_v4();

    // What the other replica's cancel does, in its transaction: the lock, then the record.
    let mut other_replica = db.begin().await.unwrap();
    lock_order(&mut other_replica, order).await;
    sqlx::query("INSERT INTO canceled_orders (order_id, canceled_at) VALUES ($1, now())")
        .bind(order)
        .execute(&mut *other_replica)
        .await
        .unwrap();
    amqp.publish_event(&order_created(order)).await;
    eventually(
        "the create waits for the lock",
        Duration::from_secs(10),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            (waiting == 1).then_some(())
        },
    )
    .await;
    other_replica.commit().await.unwrap();

    let invoice = eventually("the invoice", Duration::from_secs(10), || async {
        invoices_of(&c, order).await.pop()
    })
    .await;
    assert_eq!(invoice["status"], "void", "{invoice}");
    let e = next_voided(&mut voided_events, "invoice.voided").await;
    assert_eq!(e.order_id, order);
    assert_eq!(e.invoice_id.to_string(), invoice["id"].as_str().unwrap());
    db.close().await;
    node.shutdown().await;
}

#[tokio::test]
async fn with_the_database_away_deliveries_are_retried_with_backoff_not_dead_lettered() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let (node, c) = spawn_invoices(&env, &[]).await;
    env.set_database_accepting("invoices", false).await;

    let order_id = Uuid::new_v4();
    amqp.publish_event(&order_created(order_id)).await;
    eventually(
        "retries while the database is away",
        Duration::from_secs(10),
        || async {
            let m = c.get("/metrics").await.text;
            (metric(&m, "messages_consumed_total", &[("outcome", "retried")]).unwrap_or(0.0) >= 2.0)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = c.get("/metrics").await.text;
    let retried = metric(&m, "messages_consumed_total", &[("outcome", "retried")]).unwrap_or(0.0);
    // Backoff (50 ms doubling to 1 s in tests), not a hot loop: a handful of tries in ~3 s.
    assert!(retried < 15.0, "{retried} retries: a hot loop");
    assert_eq!(
        metric(
            &m,
            "messages_consumed_total",
            &[("outcome", "dead_lettered")]
        ),
        Some(0.0)
    );

    env.set_database_accepting("invoices", true).await;
    eventually(
        "the invoice once the database is back",
        Duration::from_secs(15),
        || async { invoices_of(&c, order_id).await.pop() },
    )
    .await;
    assert_eq!(
        amqp.ready_count(&topology::dead_letter_queue(topology::INVOICES_NODE_QUEUE))
            .await,
        0
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_failing_event_in_a_batch_is_retried_alone_and_dead_lettered_and_its_batchmates_apply_once()
 {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    // One lane, so every delivery below lands in one batch.
    let (node, c) = spawn_invoices(
        &env,
        // Published rows are kept, so that the events written can be counted below.
        &[
            ("CONSUMER_LANES", "1"),
            ("CONSUMER_BATCH_SIZE", "64"),
            ("OUTBOX_RETENTION", "1h"),
        ],
    )
    .await;
    let db = env.pg(&env.database("invoices")).await;
    let orders: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let poison = orders[11];
    // A real database failure for one event only.
    env.reject_rows("invoices", "invoices", "order_id", &poison.to_string())
        .await;

    // Hold the first order's lock, so the lane parks on it and the rest pile up behind.
    let mut holder = db.begin().await.unwrap();
    lock_order(&mut holder, orders[0]).await;
    for id in &orders {
        amqp.publish_event(&order_created(*id)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    holder.rollback().await.unwrap();

    let dlq = topology::dead_letter_queue(topology::INVOICES_NODE_QUEUE);
    wait_dead_lettered(&amqp, &c, &dlq, 1, Duration::from_secs(20)).await;
    eventually("the others invoiced", Duration::from_secs(10), || async {
        let all = c.get("/invoices?limit=200").await.body["items"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        (all == 19).then_some(())
    })
    .await;
    for id in &orders {
        let expected = usize::from(*id != poison);
        assert_eq!(invoices_of(&c, *id).await.len(), expected, "order {id}");
    }
    let m = c.get("/metrics").await.text;
    assert_eq!(
        metric(&m, "messages_consumed_total", &[("outcome", "processed")]),
        Some(19.0)
    );
    assert_eq!(
        metric(
            &m,
            "messages_consumed_total",
            &[("outcome", "dead_lettered")]
        ),
        Some(1.0)
    );
    // Retried alone (the test env allows 3 attempts): the batchmates were never retried.
    let retried = metric(&m, "messages_consumed_total", &[("outcome", "retried")]).unwrap_or(0.0);
    assert_eq!(retried, 2.0, "{m}");
    let issued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE routing_key = 'invoice.issued'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(issued, 19);
    db.close().await;
    node.shutdown().await;
}

#[tokio::test]
async fn hostile_headers_on_a_valid_event_are_dropped_and_the_event_takes_effect() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let mut out = amqp
        .watch(topology::INVOICES_EXCHANGE, "invoice.issued")
        .await;
    let (node, c) = spawn_invoices(&env, &[]).await;
    // As large as the broker lets a publisher send (its frame limit is 128 KiB).
    let huge = "r".repeat(120 * 1024);
    let cases: [(&str, &str); 4] = [
        (topology::REQUEST_ID_HEADER, huge.as_str()),
        (topology::REQUEST_ID_HEADER, "nul\u{0}byte"),
        (topology::TRACEPARENT_HEADER, huge.as_str()),
        (topology::TRACESTATE_HEADER, "only-without-traceparent"),
    ];
    let mut orders = Vec::new();
    for (header, value) in cases {
        let order_id = Uuid::new_v4();
        let event = order_created(order_id);
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            topology::CONTRACT_VERSION_HEADER.into(),
            AMQPValue::LongLongInt(1),
        );
        headers.insert(header.into(), AMQPValue::LongString(value.into()));
        amqp.publish(
            topology::ORDERS_EXCHANGE,
            "order.created",
            &contracts::encode(&event),
            BasicProperties::default()
                .with_type("order.created".into())
                .with_message_id(event.event_id().to_string().into())
                .with_headers(headers),
        )
        .await;
        orders.push(order_id);
    }
    for _ in &orders {
        let d = tokio::time::timeout(Duration::from_secs(10), out.recv())
            .await
            .expect("every invoice.issued published")
            .unwrap();
        let h = d.properties.headers().as_ref().unwrap().inner();
        assert!(h.get(topology::REQUEST_ID_HEADER).is_none(), "{h:?}");
        if let Some(AMQPValue::LongString(tp)) = h.get(topology::TRACEPARENT_HEADER) {
            assert_eq!(tp.as_bytes().len(), 55);
        }
        assert!(h.get(topology::TRACESTATE_HEADER).is_none(), "{h:?}");
    }
    for id in &orders {
        assert_eq!(invoices_of(&c, *id).await.len(), 1, "order {id}");
    }
    let m = c.get("/metrics").await.text;
    assert_eq!(
        metric(
            &m,
            "messages_consumed_total",
            &[("outcome", "dead_lettered")]
        ),
        Some(0.0)
    );
    node.shutdown().await;
}

#[tokio::test]
async fn events_that_break_the_contract_are_dead_lettered_with_the_reason_and_never_invoiced() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let (node, c) = spawn_invoices(&env, &[]).await;
    type Breakage = Box<dyn Fn(&mut contracts::OrderCreated)>;
    let breaking: Vec<(Breakage, &str)> = vec![
        (Box::new(|e| e.total_cents += 1), "total_cents"),
        (
            Box::new(|e| {
                e.items.clear();
                e.total_cents = 0;
            }),
            "items",
        ),
        (
            Box::new(|e| {
                e.items[0].quantity = -3;
                e.total_cents = -750;
            }),
            "items[0].quantity",
        ),
        (
            Box::new(|e| {
                e.items[0].unit_price_cents = -1;
                e.total_cents = -3;
            }),
            "items[0].unit_price_cents",
        ),
        (
            Box::new(|e| {
                e.items[0].sku = "x".repeat(1_000_000);
            }),
            "items[0].sku",
        ),
        (Box::new(|e| e.total_cents = i64::MAX), "total_cents"),
    ];
    let mut bad_orders = Vec::new();
    for (breakage, _) in &breaking {
        let Event::OrderCreated(mut e) = order_created(Uuid::new_v4()) else {
            unreachable!()
        };
        breakage(&mut e);
        bad_orders.push(e.order_id);
        amqp.publish_event(&Event::OrderCreated(e)).await;
    }
    let good = Uuid::new_v4();
    amqp.publish_event(&order_created(good)).await;
    eventually("the good one invoiced", Duration::from_secs(10), || async {
        invoices_of(&c, good).await.pop()
    })
    .await;
    let dlq = topology::dead_letter_queue(topology::INVOICES_NODE_QUEUE);
    eventually(
        "every breaking event dead-lettered",
        Duration::from_secs(10),
        || async { (amqp.ready_count(&dlq).await == breaking.len() as u32).then_some(()) },
    )
    .await;
    let mut reasons = Vec::new();
    for _ in 0..breaking.len() {
        let m = amqp
            .channel
            .basic_get(
                dlq.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("a dead letter");
        let h = m.properties.headers().as_ref().unwrap().inner();
        let text = |k: &str| match h.get(k) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(
            text(topology::ORIGINAL_EXCHANGE_HEADER),
            topology::ORDERS_EXCHANGE
        );
        assert_eq!(text(topology::ORIGINAL_ROUTING_KEY_HEADER), "order.created");
        reasons.push(text(topology::DEAD_LETTER_REASON_HEADER));
    }
    for (_, field) in &breaking {
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("breaks the contract") && r.contains(field)),
            "no reason names {field}: {reasons:?}"
        );
    }
    for id in bad_orders {
        assert!(
            invoices_of(&c, id).await.is_empty(),
            "order {id} was invoiced"
        );
    }
    node.shutdown().await;
}

/// A batch of `order.created` events for different orders is two statements; each event
/// still gets its own outcome, and each order's outbox holds exactly the event that matches
/// its invoice.
#[tokio::test]
async fn a_batch_of_creates_gives_each_event_its_own_outcome_and_event() {
    use actors::amqp::Outcome;
    use invoices_node::store::{Effect, apply_order_events};
    use testkit::incoming;

    let env = TestEnv::new();
    // Published rows are kept, so that every event written can be read back below.
    let (node, _c) = spawn_invoices(&env, &[("OUTBOX_RETENTION", "1h")]).await;
    let db = env.pg(&env.database("invoices")).await;
    let connections = actors::db::Connections::new(db.clone());
    let terms = Duration::from_secs(30 * 86_400);
    let (seen, canceled, twice, fresh) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let seen_before = order_created(seen);
    let before = [
        seen_before.clone(),
        order_canceled(canceled),
        order_created(twice),
    ];
    for event in &before {
        apply_order_events(&connections, &[incoming(event)], terms)
            .await
            .unwrap();
    }

    let batch = [
        order_created(fresh),
        seen_before,
        order_created(canceled),
        // Another event id for an order that has its invoice already.
        order_created(twice),
    ];
    let applied = apply_order_events(
        &connections,
        &batch.iter().map(incoming).collect::<Vec<_>>(),
        terms,
    )
    .await
    .unwrap();
    assert_eq!(
        applied.outcomes,
        vec![
            (Outcome::Applied, Effect::Issued),
            (Outcome::Duplicate, Effect::Nothing),
            (Outcome::Applied, Effect::IssuedVoid),
            (Outcome::Applied, Effect::Nothing),
        ]
    );
    let invoices: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT order_id, status FROM invoices ORDER BY order_id")
            .fetch_all(&db)
            .await
            .unwrap();
    let mut expected = vec![
        (seen, "issued".to_owned()),
        (canceled, "void".to_owned()),
        (twice, "issued".to_owned()),
        (fresh, "issued".to_owned()),
    ];
    expected.sort();
    assert_eq!(invoices, expected);
    // One event per invoice, the one matching its status; numbers never repeat.
    let events: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT aggregate_id, routing_key FROM outbox ORDER BY aggregate_id")
            .fetch_all(&db)
            .await
            .unwrap();
    let mut expected_events = vec![
        (seen, "invoice.issued".to_owned()),
        (canceled, "invoice.voided".to_owned()),
        (twice, "invoice.issued".to_owned()),
        (fresh, "invoice.issued".to_owned()),
    ];
    expected_events.sort();
    assert_eq!(events, expected_events);
    // The new invoices' events, exactly the rows written for them, are handed over for the
    // relay to publish at once.
    let handed: Vec<(Uuid, String)> = applied
        .events
        .iter()
        .map(|e| (e.event_id, e.routing_key.clone()))
        .collect();
    let written: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT event_id, routing_key FROM outbox WHERE aggregate_id = ANY($1) ORDER BY id",
    )
    .bind(vec![fresh, canceled])
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(handed, written);
    assert_eq!(
        handed.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
        ["invoice.issued", "invoice.voided"]
    );
    let numbers: i64 = sqlx::query_scalar("SELECT count(DISTINCT number) FROM invoices")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(numbers, 4);
    drop(connections);
    db.close().await;
    node.shutdown().await;
}

/// Lanes take any waiting delivery, but never one of an order another lane holds: with one
/// event per batch, a cancel and the create right behind it would otherwise go to two lanes
/// at once and the create could win. Every order canceled before it was created must be
/// born void (no `invoice.issued` for it, ever), and the plain orders around them are issued.
#[tokio::test]
async fn each_orders_events_keep_their_order_while_lanes_share_the_work() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let mut issued_events = amqp
        .watch(topology::INVOICES_EXCHANGE, "invoice.issued")
        .await;
    let (node, c) = spawn_invoices(
        &env,
        &[("CONSUMER_BATCH_SIZE", "1"), ("CONSUMER_LANES", "4")],
    )
    .await;

    let late: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let plain: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    for (l, p) in late.iter().zip(&plain) {
        amqp.publish_event(&order_canceled(*l)).await;
        amqp.publish_event(&order_created(*l)).await;
        amqp.publish_event(&order_created(*p)).await;
    }

    let issued_order = |data: &[u8]| match contracts::decode("invoice.issued", data) {
        Ok(Event::InvoiceIssued(e)) => e.order_id,
        other => panic!("not an invoice.issued: {other:?}"),
    };
    let mut issued = std::collections::HashSet::new();
    while !plain.iter().all(|p| issued.contains(p)) {
        let d = tokio::time::timeout(Duration::from_secs(20), issued_events.recv())
            .await
            .expect("every plain order is issued")
            .expect("the watch is open");
        let order_id = issued_order(&d.data);
        assert!(
            !late.contains(&order_id),
            "{order_id} was issued before its cancel applied"
        );
        issued.insert(order_id);
    }
    for l in &late {
        let inv = eventually("born void", Duration::from_secs(10), || async {
            invoices_of(&c, *l).await.pop()
        })
        .await;
        assert_eq!(inv["status"], "void", "{l}");
    }
    while let Ok(d) = issued_events.try_recv() {
        let order_id = issued_order(&d.data);
        assert!(!late.contains(&order_id), "{order_id} was issued");
    }
    node.shutdown().await;
}

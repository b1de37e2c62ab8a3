//! invoice.* events move orders forward only, once.

use std::time::Duration;

use chrono::Utc;
use contracts::{Event, InvoiceIssued, InvoicePaid};
use testkit::{TestEnv, eventually, metric};
use uuid::Uuid;

use crate::{create_order, spawn_orders};

pub(crate) fn issued(order_id: Uuid, invoice_id: Uuid) -> Event {
    let now = Utc::now();
    Event::InvoiceIssued(InvoiceIssued {
        event_id: Uuid::new_v4(),
        invoice_id,
        order_id,
        number: "INV-2026-000001".into(),
        currency: "BRL".into(),
        amount_cents: 3000,
        issued_at: now,
        due_at: now,
    })
}

#[tokio::test]
async fn status_moves_forward_only_whatever_the_order_or_repetition_of_events() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let (node, c) = spawn_orders(&env, &[]).await;
    let order = create_order(&c).await;
    let order_id: Uuid = order["id"].as_str().unwrap().parse().unwrap();
    let invoice_id = Uuid::new_v4();
    let path = format!("/orders/{order_id}");

    let first = issued(order_id, invoice_id);
    amqp.publish_event(&first).await;
    amqp.publish_event(&first).await; // redelivery of the same event
    eventually("invoiced", Duration::from_secs(10), || async {
        (c.get(&path).await.body["status"] == "invoiced").then_some(())
    })
    .await;
    assert_eq!(
        c.get(&path).await.body["invoice_id"],
        invoice_id.to_string()
    );

    let paid = Event::InvoicePaid(InvoicePaid {
        event_id: Uuid::new_v4(),
        invoice_id,
        order_id,
        paid_at: Utc::now(),
    });
    amqp.publish_event(&paid).await;
    eventually("paid", Duration::from_secs(10), || async {
        (c.get(&path).await.body["status"] == "paid").then_some(())
    })
    .await;

    // A late invoice.issued (reordered, new event id) does not move it back.
    amqp.publish_event(&issued(order_id, invoice_id)).await;
    let consumed = || async {
        let metrics = c.get("/metrics").await.text;
        let processed = metric(
            &metrics,
            "messages_consumed_total",
            &[("outcome", "processed")],
        )
        .unwrap_or(0.0);
        let duplicate = metric(
            &metrics,
            "messages_consumed_total",
            &[("outcome", "duplicate")],
        )
        .unwrap_or(0.0);
        (processed == 3.0 && duplicate == 1.0).then_some(())
    };
    eventually(
        "all four deliveries handled",
        Duration::from_secs(10),
        consumed,
    )
    .await;
    assert_eq!(c.get(&path).await.body["status"], "paid");
    node.shutdown().await;
}

#[tokio::test]
async fn an_event_for_an_unknown_order_is_dead_lettered_and_consumption_goes_on() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let (node, c) = spawn_orders(&env, &[]).await;
    amqp.publish_event(&issued(Uuid::new_v4(), Uuid::new_v4()))
        .await;
    amqp.publish(
        contracts::topology::INVOICES_EXCHANGE,
        "invoice.paid",
        b"\x00garbage",
        lapin::BasicProperties::default().with_type("invoice.paid".into()),
    )
    .await;
    let dlq = contracts::topology::dead_letter_queue(contracts::topology::ORDERS_NODE_QUEUE);
    eventually(
        "two messages in the DLQ",
        Duration::from_secs(10),
        || async { (amqp.ready_count(&dlq).await == 2).then_some(()) },
    )
    .await;

    let order = create_order(&c).await;
    let order_id: Uuid = order["id"].as_str().unwrap().parse().unwrap();
    amqp.publish_event(&issued(order_id, Uuid::new_v4())).await;
    eventually("still consuming", Duration::from_secs(10), || async {
        (c.get(&format!("/orders/{order_id}")).await.body["status"] == "invoiced").then_some(())
    })
    .await;
    node.shutdown().await;
}

/// Takes the next two events per order of `ids` (each within `within`) and checks that
/// every order's `order.created` left before its `order.canceled`.
async fn each_created_then_canceled(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<lapin::message::Delivery>,
    ids: &[String],
    within: Duration,
    leaving: &str,
) {
    let mut seen: Vec<(String, &'static str)> = Vec::new();
    while seen.len() < 2 * ids.len() {
        let d = tokio::time::timeout(within, events.recv())
            .await
            .expect(leaving)
            .unwrap();
        let event = contracts::decode(d.routing_key.as_str(), &d.data).unwrap();
        seen.push((event.order_id().to_string(), event.routing_key()));
    }
    for id in ids {
        let kinds: Vec<&str> = seen
            .iter()
            .filter(|(o, _)| o == id)
            .map(|(_, k)| *k)
            .collect();
        assert_eq!(kinds, vec!["order.created", "order.canceled"], "order {id}");
    }
}

#[tokio::test]
async fn while_the_broker_is_away_events_wait_and_then_leave_in_the_order_written() {
    let env = TestEnv::new();
    // The broker "is away" for the nodes only: they reach it through a gate that is shut.
    let broker: std::net::SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let gate = testkit::gate::Gate::start(broker, false).await;
    // Two replicas on one database, publishing one row at a time, so their relays interleave.
    let settings = [
        ("AMQP_URL", env.amqp_url_via(&gate)),
        ("OUTBOX_BATCH_SIZE", "1".to_owned()),
    ];
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (node, c) = spawn_orders(&env, &settings).await;
    let (replica, _) = spawn_orders(&env, &settings).await;
    // The test watches the exchange directly, bound before any event can leave.
    let amqp = env.amqp().await;
    let mut events = amqp
        .watch(contracts::topology::ORDERS_EXCHANGE, "order.*")
        .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let order = create_order(&c).await;
        let id = order["id"].as_str().unwrap().to_owned();
        assert_eq!(
            c.post_empty(&format!("/orders/{id}/cancel")).await.status,
            200
        );
        ids.push(id);
    }
    // Twenty events (a create and a cancel per order) wait in the outbox.
    eventually("a backlog of twenty", Duration::from_secs(5), || async {
        (metric(&c.get("/metrics").await.text, "outbox_pending_events", &[]) == Some(20.0))
            .then_some(())
    })
    .await;
    assert!(
        events.try_recv().is_err(),
        "nothing left while the broker was away"
    );

    // The broker comes back.
    gate.open();
    each_created_then_canceled(
        &mut events,
        &ids,
        Duration::from_secs(15),
        "the backlog drains",
    )
    .await;
    eventually("backlog empty", Duration::from_secs(5), || async {
        (metric(&c.get("/metrics").await.text, "outbox_pending_events", &[]) == Some(0.0))
            .then_some(())
    })
    .await;
    node.shutdown().await;
    replica.shutdown().await;
}

#[tokio::test]
async fn an_event_the_broker_refuses_is_parked_and_the_rest_of_the_outbox_goes_on() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;
    let amqp = env.amqp().await;
    // A queue that refuses every order.canceled routed to it: the publisher gets a nack.
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(0),
    );
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    amqp.channel
        .queue_declare("refuses-cancels".into(), Default::default(), args)
        .await
        .unwrap();
    amqp.channel
        .queue_bind(
            "refuses-cancels".into(),
            contracts::topology::ORDERS_EXCHANGE.into(),
            "order.canceled".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut created = amqp
        .watch(contracts::topology::ORDERS_EXCHANGE, "order.created")
        .await;

    let refused = create_order(&c).await["id"].as_str().unwrap().to_owned();
    assert_eq!(
        c.post_empty(&format!("/orders/{refused}/cancel"))
            .await
            .status,
        200
    );
    eventually(
        "the refused event parked",
        Duration::from_secs(10),
        || async {
            (metric(
                &c.get("/metrics").await.text,
                "outbox_parked_events_total",
                &[],
            ) == Some(1.0))
            .then_some(())
        },
    )
    .await;
    // Orders after it are published at once: the refusal holds nothing else back.
    let mut later = Vec::new();
    for _ in 0..5 {
        later.push(create_order(&c).await["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let d = tokio::time::timeout(Duration::from_secs(5), created.recv())
            .await
            .expect("creates keep leaving")
            .unwrap();
        seen.push(
            contracts::decode("order.created", &d.data)
                .unwrap()
                .order_id()
                .to_string(),
        );
    }
    for id in &later {
        assert!(seen.contains(id), "{id} was held back");
    }
    let db = env.pg(&env.database("orders")).await;
    let (parked, reason): (i64, Option<String>) = sqlx::query_as(
        "SELECT count(*), max(parked_reason) FROM outbox WHERE parked_at IS NOT NULL AND routing_key = 'order.canceled'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(parked, 1);
    assert!(reason.unwrap().contains("refused"));
    db.close().await;
    node.shutdown().await;
}

/// A new order's `order.created` is published by its writer right after the commit, its
/// row leased meanwhile. If the writer never hands it over (it crashed between its commit
/// and the publish), no relay pass takes the row while the lease lasts — so no replica
/// doubles a publish in flight — and a pass publishes it once the lease has ended.
#[tokio::test]
async fn an_event_never_handed_to_the_relay_leaves_once_its_lease_ends() {
    use orders_node::domain::NewOrder;
    use orders_node::store::{CreateRequest, Created, create_many};

    let env = TestEnv::new();
    let (node, _c) = spawn_orders(&env, &[("OUTBOX_POLL_INTERVAL", "200ms")]).await;
    let db = env.pg(&env.database("orders")).await;
    let amqp = env.amqp().await;
    let mut events = amqp
        .watch(contracts::topology::ORDERS_EXCHANGE, "order.created")
        .await;

    // The store's own commit, with nobody told afterwards: what a crash right after it
    // leaves behind.
    let connections = actors::db::Connections::new(db.clone());
    let request = CreateRequest {
        order: NewOrder::from_json(&testkit::order_body()).unwrap(),
        key: None,
        cause: Default::default(),
        span: tracing::Span::none(),
    };
    let group = create_many(&connections, std::slice::from_ref(&request)).await;
    let Some(Ok(Created::New(order))) = group.results.first() else {
        panic!(
            "the order was not created: {:?}",
            group.results.first().map(|r| r.is_ok())
        );
    };
    assert_eq!(group.events.len(), 1, "its event, to hand to the relay");
    let (event_id, lease_until): (Uuid, chrono::DateTime<Utc>) =
        sqlx::query_as("SELECT event_id, lease_until FROM outbox WHERE aggregate_id = $1")
            .bind(order.id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(event_id, group.events[0].event_id);

    let delivery = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("the event leaves after its lease")
        .unwrap();
    let received_at = Utc::now();
    let event = contracts::decode(delivery.routing_key.as_str(), &delivery.data).unwrap();
    assert_eq!(event.event_id(), event_id);
    assert!(
        received_at >= lease_until,
        "published at {received_at}, before the lease ended at {lease_until}"
    );
    eventually("its row settled", Duration::from_secs(10), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&db)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    assert!(events.try_recv().is_err(), "published once");
    drop(connections);
    db.close().await;
    node.shutdown().await;
}

/// Events handed to a relay that cannot publish (the broker away) do not wait for their
/// leases once it can again: it ends those leases itself and a pass takes the rows. (Had
/// they waited, each would arrive only once its lease ended, as in the test above.)
#[tokio::test]
async fn events_handed_over_while_the_broker_is_away_leave_before_their_leases_end() {
    let env = TestEnv::new();
    let broker: std::net::SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let gate = testkit::gate::Gate::start(broker, false).await;
    let url = env.amqp_url_via(&gate);
    let (node, c) = spawn_orders(&env, &[("AMQP_URL", url.as_str())]).await;
    let db = env.pg(&env.database("orders")).await;
    let amqp = env.amqp().await;
    let mut events = amqp
        .watch(contracts::topology::ORDERS_EXCHANGE, "order.created")
        .await;

    let mut ids = Vec::new();
    for _ in 0..5 {
        let order = create_order(&c).await;
        ids.push(Uuid::parse_str(order["id"].as_str().unwrap()).unwrap());
    }
    let leases: Vec<Option<chrono::DateTime<Utc>>> =
        sqlx::query_scalar("SELECT lease_until FROM outbox ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(leases.len(), 5, "each order's event waits in the outbox");
    let first_lease_end = leases
        .iter()
        .map(|l| l.expect("written with a lease"))
        .min()
        .unwrap();

    gate.open();
    let mut arrived = Vec::new();
    while arrived.len() < ids.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .expect("the events leave once the broker is back")
            .unwrap();
        let Event::OrderCreated(e) =
            contracts::decode(delivery.routing_key.as_str(), &delivery.data).unwrap()
        else {
            panic!("not an order.created")
        };
        arrived.push(e.order_id);
    }
    let last_arrival = Utc::now();
    arrived.sort();
    ids.sort();
    assert_eq!(arrived, ids);
    assert!(
        last_arrival < first_lease_end,
        "the last event arrived at {last_arrival}, after the first lease ended at \
         {first_lease_end}: the events waited for their leases"
    );
    db.close().await;
    node.shutdown().await;
}

/// A cancel committed while its order's `order.created` is still being published by its
/// writer (its row leased) waits behind it: each order's events leave in the order written.
#[tokio::test]
async fn a_cancel_right_behind_its_create_leaves_after_it() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;
    let amqp = env.amqp().await;
    let mut events = amqp
        .watch(contracts::topology::ORDERS_EXCHANGE, "order.*")
        .await;
    let creates_and_cancels = (0..10).map(|_| {
        let c = c.clone();
        async move {
            let order = create_order(&c).await;
            let id = order["id"].as_str().unwrap().to_owned();
            assert_eq!(
                c.post_empty(&format!("/orders/{id}/cancel")).await.status,
                200
            );
            id
        }
    });
    let ids = futures_util::future::join_all(creates_and_cancels).await;
    each_created_then_canceled(
        &mut events,
        &ids,
        Duration::from_secs(30),
        "every event leaves",
    )
    .await;
    node.shutdown().await;
}

//! `ops dlq` against the real RabbitMQ: dead letters made both ways (the broker's, with
//! `x-death`; a node's copy, with its reason headers), listed and shown without being
//! consumed, replayed to where they came from, purged.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use contracts::events::{LineItem, OrderCreated};
use contracts::{Event, topology};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use testkit::TestEnv;

fn ops(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ops"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ops runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("ops exits")
}

/// `ops dlq <args…> --amqp-url <url> --queue <queue>`.
fn ops_dlq(url: &str, queue: &str, args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["dlq"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--amqp-url", url, "--queue", queue]);
    ops(&all, stdin)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn list(url: &str) -> Vec<Value> {
    // The consumed queue's name stands for its DLQ.
    let out = ops_dlq(url, topology::INVOICES_NODE_QUEUE, &["list", "--json"], "");
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("a JSON array")
}

#[test]
fn the_nodes_worker_thread_setting_does_not_stop_the_tool() {
    // TOKIO_WORKER_THREADS is the nodes' setting; tokio would have panicked on it here.
    let out = Command::new(env!("CARGO_BIN_EXE_ops"))
        .args(["dlq", "list", "--amqp-url", "not a url", "--queue", "q"])
        .env("TOKIO_WORKER_THREADS", "many")
        .output()
        .expect("ops runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("ops: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_to_their_origin_and_purged() {
    let env = TestEnv::new();
    let url = env.amqp_url();
    let amqp = env.amqp().await;
    actors::amqp::topology::declare(&amqp.channel)
        .await
        .expect("topology");
    let queue = topology::INVOICES_NODE_QUEUE;
    let dlq = topology::dead_letter_queue(queue);

    // 1. A real event the broker dead-letters (rejected without requeue): x-death says why.
    let event = Event::OrderCreated(OrderCreated {
        event_id: uuid::Uuid::now_v7(),
        order_id: uuid::Uuid::new_v4(),
        customer_id: uuid::Uuid::new_v4(),
        currency: "BRL".into(),
        items: vec![LineItem {
            sku: "DLQ-1".into(),
            quantity: 1,
            unit_price_cents: 100,
        }],
        total_cents: 100,
        created_at: chrono::Utc::now(),
    });
    amqp.publish_event(&event).await;
    let got = testkit::eventually(
        "the event in its queue",
        std::time::Duration::from_secs(10),
        || async {
            amqp.channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("get")
        },
    )
    .await;
    got.delivery
        .acker
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .expect("rejected");

    // 2. A poison message as a node dead-letters it: its own copy, with reason and origin.
    let mut headers = FieldTable::default();
    for (k, v) in [
        (
            topology::DEAD_LETTER_REASON_HEADER,
            "undecodable: not MessagePack",
        ),
        (
            topology::ORIGINAL_EXCHANGE_HEADER,
            topology::ORDERS_EXCHANGE,
        ),
        (
            topology::ORIGINAL_ROUTING_KEY_HEADER,
            topology::ORDER_CREATED,
        ),
    ] {
        headers.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    amqp.publish(
        &topology::dead_letter_exchange(queue),
        queue,
        b"\xc1 garbage",
        BasicProperties::default()
            .with_message_id("poison-1".into())
            .with_type(topology::ORDER_CREATED.into())
            .with_headers(headers),
    )
    .await;
    testkit::eventually(
        "both dead letters in the DLQ",
        std::time::Duration::from_secs(10),
        || async { (amqp.ready_count(&dlq).await == 2).then_some(()) },
    )
    .await;

    // list: both, decoded or not, with why and where from — and nothing consumed.
    let letters = list(&url);
    assert_eq!(letters.len(), 2, "{letters:?}");
    let id = event.event_id().to_string();
    let real = letters
        .iter()
        .find(|l| l["message_id"] == id.as_str())
        .expect("the event");
    assert_eq!(real["type"], "order.created");
    assert_eq!(real["reason"], "rejected");
    assert_eq!(real["origin_exchange"], topology::ORDERS_EXCHANGE);
    assert_eq!(real["origin_routing_key"], topology::ORDER_CREATED);
    assert_eq!(
        real["event"]["Ok"]["order_id"],
        event.order_id().to_string().as_str()
    );
    let poison = letters
        .iter()
        .find(|l| l["message_id"] == "poison-1")
        .expect("the poison");
    assert_eq!(poison["reason"], "undecodable: not MessagePack");
    assert_eq!(poison["origin_exchange"], topology::ORDERS_EXCHANGE);
    assert!(poison["event"]["Err"].is_string(), "{poison}");
    assert_eq!(list(&url).len(), 2, "listing consumed nothing");

    // show: one in full.
    let out = ops_dlq(&url, &dlq, &["show", "--id", &id], "");
    assert!(out.status.success(), "{}", text(&out));
    let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(shown["event"]["Ok"]["event_id"], id.as_str());
    let out = ops_dlq(&url, &dlq, &["show", "--id", "nope"], "");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // replay --dry-run changes nothing; replay puts the event back on its queue, same id.
    let out = ops_dlq(&url, &dlq, &["replay", "--id", &id, "--dry-run"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("would"), "{}", text(&out));
    // Each command gives back what it browsed before it exits: nothing missing, at once.
    assert_eq!(amqp.ready_count(&dlq).await, 2);
    let out = ops_dlq(&url, &dlq, &["replay", "--id", &id], "");
    assert!(out.status.success(), "{}", text(&out));
    testkit::eventually(
        "the event back on its queue",
        std::time::Duration::from_secs(10),
        || async {
            (amqp.ready_count(queue).await == 1 && amqp.ready_count(&dlq).await == 1).then_some(())
        },
    )
    .await;
    let back = amqp
        .channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("replayed");
    assert_eq!(
        back.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(id.clone())
    );
    let replayed_headers = back
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    assert!(!replayed_headers.inner().contains_key("x-death"));
    assert_eq!(
        actors::amqp::consumer::decode_delivery(&back.delivery).expect("decodes"),
        event
    );

    // purge: asks first; --yes does not.
    let out = ops_dlq(&url, &dlq, &["purge"], "no\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(amqp.ready_count(&dlq).await, 1);
    let out = ops_dlq(&url, &dlq, &["purge", "--yes"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(amqp.ready_count(&dlq).await, 0);
}

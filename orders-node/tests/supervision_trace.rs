//! Supervision shows in traces: a crashed-and-restarted actor's start, failure (with the
//! error) and restart (with the count), exported over OTLP. Its own test binary, because it
//! installs the process-wide subscriber.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use orders_node::{OrdersConfig, OrdersNode};
use testkit::otlp::Receiver;
use testkit::{Client, TestEnv, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_and_restart_appear_as_spans_of_the_supervision_trace() {
    let env = TestEnv::new();
    let receiver = Receiver::start().await;
    let mut vars = env.vars("orders");
    vars.set("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
    vars.set("RUST_LOG", "info");
    let config = OrdersConfig::from_vars(&vars).unwrap();
    let telemetry = actors::telemetry::init(&config.common).unwrap();
    let node = OrdersNode::build(config).await.unwrap();
    let c = Client::new(node.addr());
    assert!(node.inject_store_panic());
    eventually("restarted", Duration::from_secs(10), || async {
        let tree = c.get("/actors").await.body.to_string();
        (tree.contains("\"restarts\":1") && !tree.contains("restarting")).then_some(())
    })
    .await;
    node.shutdown().await;
    telemetry.shutdown().await;

    let spans = receiver.spans();
    let root = spans
        .iter()
        .find(|s| s.name == "orders-node supervision")
        .expect("supervision root span");
    let in_trace: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id && s.parent_span_id == root.span_id)
        .collect();
    let named = |n: &str| in_trace.iter().filter(|s| s.name == n).collect::<Vec<_>>();
    let started = named("actor started");
    assert!(
        started
            .iter()
            .any(|s| s.attributes.get("actor").map(String::as_str)
                == Some("orders-node/http-intake")),
        "{started:?}"
    );
    let failed = named("actor failed");
    assert_eq!(failed.len(), 1, "{in_trace:?}");
    assert!(
        failed[0]
            .attributes
            .get("error")
            .is_some_and(|e| e.contains("injected fault")),
        "{:?}",
        failed[0]
    );
    assert!(
        failed[0]
            .attributes
            .get("actor")
            .is_some_and(|a| a.starts_with("orders-node/store/worker-"))
    );
    let restarted = named("actor restarted");
    assert_eq!(restarted.len(), 1, "{in_trace:?}");
    assert_eq!(
        restarted[0].attributes.get("restarts").map(String::as_str),
        Some("1")
    );
    assert!(
        restarted[0]
            .events
            .iter()
            .any(|(name, _)| name == "actor restarted"),
        "{:?}",
        restarted[0]
    );
}

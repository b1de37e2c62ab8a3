//! One trace per order, across both real processes and the broker, as an OTLP backend
//! receives it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use testkit::otlp::{CONSUMER, PRODUCER, ReceivedSpan, Receiver, SERVER};
use testkit::{Client, NodeProcess, TestEnv, eventually, free_port};

/// The invoices-node binary beside ours (built by the workspace test run; built here if not).
fn invoices_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_orders-node")).with_file_name("invoices-node");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "invoices-node"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building invoices-node");
    }
    path
}

fn with_otel(env: &TestEnv, node: &str, receiver: &Receiver) -> actors::config::Vars {
    let mut vars = env.vars(node);
    vars.set("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
    vars.set("OTEL_EXPORTER_OTLP_PROTOCOL", receiver.protocol);
    vars.set("OTEL_BSP_SCHEDULE_DELAY", "100");
    // Percent-encoded as the standard writes it; a collector that needs credentials gets them.
    vars.set(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "authorization=Bearer%20collector-t0ken",
    );
    vars
}

fn find<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    f: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| f(s))
        .unwrap_or_else(|| panic!("no {what} span in {spans:#?}"))
}

fn assert_messaging(span: &ReceivedSpan, exchange: &str, routing_key: &str) {
    let a = &span.attributes;
    assert_eq!(
        a.get("messaging.system").map(String::as_str),
        Some("rabbitmq"),
        "{span:?}"
    );
    assert_eq!(
        a.get("messaging.destination.name").map(String::as_str),
        Some(exchange),
        "{span:?}"
    );
    assert_eq!(
        a.get("messaging.rabbitmq.destination.routing_key")
            .map(String::as_str),
        Some(routing_key),
        "{span:?}"
    );
    assert!(
        a.get("messaging.message.id")
            .is_some_and(|id| id.len() == 36),
        "{span:?}"
    );
}

#[tokio::test]
async fn an_order_is_one_trace_from_the_http_request_to_the_invoice_and_back_over_otlp_http() {
    one_trace_per_order(Receiver::start().await).await
}

#[tokio::test]
async fn an_order_is_one_trace_from_the_http_request_to_the_invoice_and_back_over_otlp_grpc() {
    one_trace_per_order(Receiver::start_grpc().await).await
}

async fn one_trace_per_order(receiver: Receiver) {
    let env = TestEnv::new();
    let mut invoices = NodeProcess::start(
        invoices_binary().to_str().unwrap(),
        &with_otel(&env, "invoices", &receiver),
        free_port(),
    );
    let mut orders = NodeProcess::start(
        env!("CARGO_BIN_EXE_orders-node"),
        &with_otel(&env, "orders", &receiver),
        free_port(),
    );
    invoices.wait_up().await;
    orders.wait_up().await;
    let oc = Client::new(orders.addr);
    oc.wait_broker_connected().await;
    Client::new(invoices.addr).wait_broker_connected().await;

    // As Kong would send it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let reply = oc
        .send(
            oc.request(reqwest::Method::POST, "/orders")
                .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
                .header("kong-request-id", "kong-trace-1")
                .json(&testkit::order_body()),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    eventually("invoiced", Duration::from_secs(15), || async {
        (oc.get(&format!("/orders/{id}")).await.body["status"] == "invoiced").then_some(())
    })
    .await;
    // A graceful stop flushes every span.
    assert_eq!(orders.sigterm(Duration::from_secs(15)).await, Some(0));
    assert_eq!(invoices.sigterm(Duration::from_secs(15)).await, Some(0));

    let spans = eventually("the whole trace", Duration::from_secs(10), || async {
        let spans = receiver.trace(trace_id);
        let done = spans
            .iter()
            .any(|s| s.service == "orders-node" && s.kind == CONSUMER);
        done.then_some(spans)
    })
    .await;

    let server = find(&spans, "HTTP server", |s| {
        s.service == "orders-node" && s.kind == SERVER
    });
    assert_eq!(
        server.parent_span_id, caller_span,
        "the request span continues the caller's trace"
    );
    assert_eq!(
        server.attributes.get("request_id").map(String::as_str),
        Some("kong-trace-1")
    );

    let order_publish = find(&spans, "order.created publish", |s| {
        s.kind == PRODUCER
            && s.attributes
                .get("messaging.rabbitmq.destination.routing_key")
                .map(String::as_str)
                == Some("order.created")
    });
    assert_eq!(order_publish.service, "orders-node");
    assert_eq!(order_publish.name, "orders.events publish");
    assert_messaging(order_publish, "orders.events", "order.created");
    find(&spans, "order insert", |s| {
        s.service == "orders-node" && s.name == "INSERT orders"
    });

    let invoice_consume = find(&spans, "invoices consume", |s| {
        s.service == "invoices-node" && s.kind == CONSUMER
    });
    assert_messaging(invoice_consume, "orders.events", "order.created");
    assert_eq!(invoice_consume.name, "invoices-node.orders-events process");
    assert_eq!(
        invoice_consume.parent_span_id, order_publish.span_id,
        "the consumer is the producer's child"
    );
    find(&spans, "invoice insert", |s| {
        s.service == "invoices-node" && s.name == "INSERT invoices"
    });

    let invoice_publish = find(&spans, "invoice.issued publish", |s| {
        s.kind == PRODUCER && s.service == "invoices-node"
    });
    assert_messaging(invoice_publish, "invoices.events", "invoice.issued");
    let order_consume = find(&spans, "orders consume", |s| {
        s.service == "orders-node" && s.kind == CONSUMER
    });
    assert_messaging(order_consume, "invoices.events", "invoice.issued");
    assert_eq!(order_consume.parent_span_id, invoice_publish.span_id);
    find(&spans, "order update", |s| {
        s.service == "orders-node" && s.name == "UPDATE orders"
    });

    // The chain is unbroken: every parent is the caller's span or a span of this trace.
    let ids: HashMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for s in &spans {
        assert!(
            s.parent_span_id == caller_span || ids.contains_key(s.parent_span_id.as_str()),
            "orphan span {s:?}"
        );
        assert_eq!(
            s.authorization.as_deref(),
            Some("Bearer collector-t0ken"),
            "each export carries OTEL_EXPORTER_OTLP_HEADERS, decoded: {s:?}"
        );
    }
}

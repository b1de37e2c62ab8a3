//! Health, readiness, metrics, the actor tree, and behaviour when a dependency is down.

use std::time::Duration;

use testkit::{TestEnv, eventually, metric};

use crate::{create_order, park_a_cancel, spawn_orders};

#[tokio::test]
async fn health_ready_metrics_and_actors_describe_the_node() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;
    let health = c.get("/health").await;
    assert_eq!((health.status, health.text.as_str()), (200, "OK"));
    let ready = eventually(
        "ready with the broker connected",
        Duration::from_secs(10),
        || async {
            let r = c.get("/health/ready").await;
            (r.status == 200 && r.body["checks"]["broker"] == "connected").then_some(r)
        },
    )
    .await;
    assert_eq!(ready.body["checks"]["database"], "up");

    create_order(&c).await;
    let metrics = c.get("/metrics").await;
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let m = |name: &str, labels: &[(&str, &str)]| metric(&metrics.text, name, labels);
    assert_eq!(
        m(
            "http_requests_total",
            &[
                ("route", "/orders"),
                ("method", "POST"),
                ("status", "201"),
                ("node", "orders-node")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            "http_request_duration_seconds_count",
            &[("route", "/orders"), ("method", "POST")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            "domain_events_total",
            &[("entity", "order"), ("outcome", "created")]
        ),
        Some(1.0)
    );
    for link in ["publish", "consume"] {
        assert_eq!(
            m("amqp_connection_up", &[("link", link)]),
            Some(1.0),
            "{link}"
        );
    }
    assert!(
        m("outbox_pending_events", &[]).is_some(),
        "{}",
        metrics.text
    );
    eventually(
        "order.created published",
        Duration::from_secs(10),
        || async {
            let text = c.get("/metrics").await.text;
            (metric(
                &text,
                "messages_published_total",
                &[
                    ("exchange", "orders.events"),
                    ("routing_key", "order.created"),
                ],
            ) == Some(1.0))
            .then_some(())
        },
    )
    .await;

    let actors = c.get("/actors").await;
    let root = &actors.body["actors"][0];
    assert_eq!(root["name"], "orders-node");
    let names: Vec<&str> = root["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for expected in [
        "amqp-publish",
        "amqp-consume",
        "consumer",
        "http-intake",
        "outbox-relay",
        "store",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn with_the_broker_unreachable_orders_are_still_accepted_and_ready() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")]).await;
    let created = create_order(&c).await;
    assert_eq!(created["status"], "pending");
    let ready = c.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_ne!(ready.body["checks"]["broker"], "connected");
    eventually(
        "backlog of one reported",
        Duration::from_secs(5),
        || async {
            (metric(&c.get("/metrics").await.text, "outbox_pending_events", &[]) == Some(1.0))
                .then_some(())
        },
    )
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn with_the_database_refusing_connections_requests_get_503_with_retry_after() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;
    // Scoped to this test's database: refuse new connections and drop the existing ones.
    env.set_database_accepting("orders", false).await;

    let r = eventually(
        "503 while the database is away",
        Duration::from_secs(15),
        || async {
            let r = c.post_json("/orders", &testkit::order_body()).await;
            (r.status == 503).then_some(r)
        },
    )
    .await;
    r.problem(503);
    assert!(r.header("retry-after").is_some());
    let ready = c.get("/health/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body["checks"]["database"], "down");

    env.set_database_accepting("orders", true).await;
    eventually("serving again", Duration::from_secs(15), || async {
        (c.post_json("/orders", &testkit::order_body()).await.status == 201).then_some(())
    })
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn past_the_in_flight_limit_intake_answers_503_instead_of_queueing() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[("HTTP_MAX_IN_FLIGHT", "1")]).await;
    let order = create_order(&c).await;
    let id = order["id"].as_str().unwrap().to_owned();
    // Hold the order's row lock so a cancel stays in flight, using the one permit.
    let pool = env.pg(&env.database("orders")).await;
    let (holder, stuck) = park_a_cancel(&env, &c, &pool, &id).await;
    let refused = eventually(
        "a 503 while the permit is taken",
        Duration::from_secs(10),
        || async {
            let r = c.get("/orders").await;
            (r.status == 503).then_some(r)
        },
    )
    .await;
    refused.problem(503);
    assert!(refused.header("retry-after").is_some());
    // Probes are not counted against the limit.
    assert_eq!(c.get("/health").await.status, 200);
    holder.rollback().await.unwrap();
    let done = stuck.await.unwrap();
    assert_eq!(
        (done.status, done.body["status"].as_str()),
        (200, Some("canceled")),
        "{}",
        done.text
    );
    assert_eq!(c.get("/orders").await.status, 200);
    node.shutdown().await;
}

#[tokio::test]
async fn every_known_series_exists_from_start_and_probes_stay_small() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[("STORE_WORKERS", "12")]).await;
    let text = c.get("/metrics").await.text;
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels);
    // No crash yet is a 0, not a missing series: for every actor of the tree.
    for actor in [
        "orders-node/store",
        "orders-node/store/worker-0",
        "orders-node/store/worker-11",
        "orders-node/amqp-publish",
        "orders-node/amqp-consume",
        "orders-node/outbox-relay",
        "orders-node/consumer",
        "orders-node/http-intake",
    ] {
        assert_eq!(
            m("actor_restarts_total", &[("actor", actor)]),
            Some(0.0),
            "{actor}"
        );
    }
    for kind in ["invoice.issued", "invoice.paid", "invoice.voided"] {
        for outcome in ["processed", "duplicate", "retried", "dead_lettered"] {
            assert_eq!(
                m(
                    "messages_consumed_total",
                    &[
                        ("queue", "orders-node.invoices-events"),
                        ("type", kind),
                        ("outcome", outcome)
                    ]
                ),
                Some(0.0),
                "{kind} {outcome}"
            );
        }
    }
    for key in ["order.created", "order.canceled"] {
        assert_eq!(
            m("messages_published_total", &[("routing_key", key)]),
            Some(0.0)
        );
    }
    assert_eq!(
        m(
            "domain_events_total",
            &[("entity", "order"), ("outcome", "invoiced")]
        ),
        Some(0.0)
    );

    // Readiness answers the checks only; the tree lives at /actors, in start order.
    let ready = c.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["checks"]["actors"], "running");
    assert!(ready.body.get("actors").is_none(), "{}", ready.text);
    assert!(ready.text.len() < 200, "{}", ready.text);
    let tree = c.get("/actors").await.body;
    let root = &tree["actors"][0];
    let names = |node: &serde_json::Value| -> Vec<String> {
        node["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(root),
        [
            "store",
            "amqp-publish",
            "amqp-consume",
            "outbox-relay",
            "consumer",
            "http-intake"
        ]
    );
    let workers: Vec<String> = (0..12).map(|i| format!("worker-{i}")).collect();
    assert_eq!(names(&root["children"][0]), workers);
    node.shutdown().await;
}

#[tokio::test]
async fn a_crashed_actor_is_listed_by_readiness_while_it_is_down() {
    let env = TestEnv::new();
    // A long restart backoff keeps the crashed worker down while we look.
    let (node, c) = spawn_orders(
        &env,
        &[
            ("RECONNECT_BACKOFF_MIN", "3s"),
            ("RECONNECT_BACKOFF_MAX", "3s"),
        ],
    )
    .await;
    assert!(node.inject_store_panic());
    let ready = eventually(
        "not ready while a worker is down",
        Duration::from_secs(5),
        || async {
            let r = c.get("/health/ready").await;
            (r.status == 503).then_some(r)
        },
    )
    .await;
    assert_eq!(ready.body["checks"]["actors"], "degraded");
    assert_eq!(
        ready.body["checks"]["not_running"],
        serde_json::json!(["orders-node/store/worker-0"])
    );
    eventually(
        "ready again after the restart",
        Duration::from_secs(10),
        || async { (c.get("/health/ready").await.status == 200).then_some(()) },
    )
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn the_fault_injection_route_exists_only_when_switched_on() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;
    c.post_empty("/faults/panic/consumer").await.problem(404);
    node.shutdown().await;
}

/// Sum of the restarts of `name` and everything under it in `/actors`.
fn restarts_in_tree(actors: &serde_json::Value, name: &str) -> Option<u64> {
    fn total(a: &serde_json::Value) -> u64 {
        a["restarts"].as_u64().unwrap_or(0)
            + a["children"]
                .as_array()
                .map_or(0, |c| c.iter().map(total).sum())
    }
    actors.as_array()?.iter().find_map(|a| {
        if a["name"] == name {
            Some(total(a))
        } else {
            restarts_in_tree(&a["children"], name)
        }
    })
}

#[tokio::test]
async fn every_actor_a_drill_can_crash_is_restarted_and_the_node_keeps_serving() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[("FAULT_INJECTION", "on")]).await;
    let unknown = c.post_empty("/faults/panic/nobody").await;
    assert!(
        unknown.problem(404)["detail"]
            .as_str()
            .unwrap()
            .contains("outbox-relay")
    );
    assert_eq!(c.get("/faults/panic/consumer").await.status, 405);
    for actor in actors::faults::ACTORS {
        let reply = c.post_empty(&format!("/faults/panic/{actor}")).await;
        assert_eq!(reply.status, 202, "{actor}: {}", reply.text);
        // A crashed intake closes its kept-alive connections: ask on new ones.
        let c = testkit::Client::new(node.addr());
        let path = format!("orders-node/{actor}");
        eventually(
            &format!("{actor} restarted, in /actors and in actor_restarts_total"),
            Duration::from_secs(15),
            || async {
                let tree = c.get("/actors").await.body;
                let metrics = c.get("/metrics").await.text;
                let counted: f64 = metrics
                    .lines()
                    .filter(|l| {
                        l.starts_with(&format!("actor_restarts_total{{actor=\"{path}"))
                            && !l.ends_with(" 0")
                    })
                    .count() as f64;
                (restarts_in_tree(&tree["actors"], actor) == Some(1) && counted >= 1.0)
                    .then_some(())
            },
        )
        .await;
        eventually(
            &format!("ready after {actor} restarted"),
            Duration::from_secs(15),
            || async { (c.get("/health/ready").await.status == 200).then_some(()) },
        )
        .await;
        // Still taking orders, and still publishing them.
        create_order(&c).await;
    }
    let c = testkit::Client::new(node.addr());
    c.wait_broker_connected().await;
    eventually("every order published", Duration::from_secs(15), || async {
        (metric(&c.get("/metrics").await.text, "outbox_pending_events", &[]) == Some(0.0))
            .then_some(())
    })
    .await;
    node.shutdown().await;
}

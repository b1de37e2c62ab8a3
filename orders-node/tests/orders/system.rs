//! Both nodes together through the real broker: the whole order → invoice lifecycle, and
//! the promises under failure (panic, closed connections, SIGKILL).

use std::time::{Duration, Instant};

use invoices_node::{InvoicesConfig, InvoicesNode};
use serde_json::Value;
use testkit::{Client, NodeProcess, TestEnv, eventually, free_port, metric};

use crate::{create_order, spawn_orders};

async fn spawn_invoices(env: &TestEnv) -> (InvoicesNode, Client) {
    let node = InvoicesNode::build(InvoicesConfig::from_vars(&env.vars("invoices")).unwrap())
        .await
        .expect("invoices-node starts");
    let client = Client::new(node.addr());
    client.wait_broker_connected().await;
    (node, client)
}

async fn wait_status(c: &Client, order_id: &str, status: &str) -> Value {
    eventually(
        &format!("order {order_id} {status}"),
        Duration::from_secs(15),
        || async {
            let r = c.get(&format!("/orders/{order_id}")).await;
            (r.body["status"] == status).then_some(r.body)
        },
    )
    .await
}

async fn invoices_of(c: &Client, order_id: &str) -> Vec<Value> {
    c.get(&format!("/invoices?order_id={order_id}")).await.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn an_order_is_invoiced_paid_and_the_order_follows() {
    let env = TestEnv::new();
    let (invoices, ic) = spawn_invoices(&env).await;
    let (orders, oc) = spawn_orders(&env, &[]).await;

    let started = Instant::now();
    let order = create_order(&oc).await;
    let id = order["id"].as_str().unwrap();
    let invoiced = wait_status(&oc, id, "invoiced").await;
    println!("order → invoiced in {:?}", started.elapsed());

    let invoice = invoices_of(&ic, id).await.pop().expect("one invoice");
    assert_eq!(invoiced["invoice_id"], invoice["id"]);
    assert_eq!(invoice["status"], "issued");
    assert_eq!(invoice["amount_cents"], 3000);
    assert_eq!(invoice["currency"], "BRL");
    assert_eq!(invoice["customer_id"], order["customer_id"]);
    assert!(
        invoice["number"].as_str().unwrap().starts_with("INV-2026-"),
        "{invoice}"
    );
    let issued: chrono::DateTime<chrono::Utc> =
        invoice["issued_at"].as_str().unwrap().parse().unwrap();
    let due: chrono::DateTime<chrono::Utc> = invoice["due_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(due - issued, chrono::Duration::days(30));

    let paid = ic
        .post_empty(&format!(
            "/invoices/{}/pay",
            invoice["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (paid.status, paid.body["status"].as_str()),
        (200, Some("paid")),
        "{}",
        paid.text
    );
    assert!(paid.body["paid_at"].is_string());
    wait_status(&oc, id, "paid").await;
    oc.post_empty(&format!("/orders/{id}/cancel"))
        .await
        .problem(409);
    orders.shutdown().await;
    invoices.shutdown().await;
}

#[tokio::test]
async fn canceling_voids_the_invoice_whether_it_exists_yet_or_not() {
    let env = TestEnv::new();
    let (orders, oc) = spawn_orders(&env, &[]).await;

    // Before the invoice exists: invoices-node is not running yet.
    let early = create_order(&oc).await;
    let early_id = early["id"].as_str().unwrap().to_owned();
    assert_eq!(
        oc.post_empty(&format!("/orders/{early_id}/cancel"))
            .await
            .status,
        200
    );

    let (invoices, ic) = spawn_invoices(&env).await;
    let void = eventually(
        "the early order's invoice is void",
        Duration::from_secs(15),
        || async {
            invoices_of(&ic, &early_id)
                .await
                .pop()
                .filter(|i| i["status"] == "void")
        },
    )
    .await;
    ic.post_empty(&format!("/invoices/{}/pay", void["id"].as_str().unwrap()))
        .await
        .problem(409);

    // After the invoice exists.
    let late = create_order(&oc).await;
    let late_id = late["id"].as_str().unwrap().to_owned();
    wait_status(&oc, &late_id, "invoiced").await;
    assert_eq!(
        oc.post_empty(&format!("/orders/{late_id}/cancel"))
            .await
            .status,
        200
    );
    eventually(
        "the late order's invoice is void",
        Duration::from_secs(15),
        || async {
            invoices_of(&ic, &late_id)
                .await
                .pop()
                .filter(|i| i["status"] == "void")
        },
    )
    .await;
    assert_eq!(invoices_of(&ic, &late_id).await.len(), 1);
    assert_eq!(
        oc.get(&format!("/orders/{late_id}")).await.body["status"],
        "canceled"
    );
    orders.shutdown().await;
    invoices.shutdown().await;
}

#[tokio::test]
async fn a_panicking_actor_is_restarted_and_the_node_keeps_serving() {
    let env = TestEnv::new();
    let (invoices, ic) = spawn_invoices(&env).await;
    let (orders, oc) = spawn_orders(&env, &[]).await;
    // Each round waits for the restarts before the next: with fewer workers than rounds, a
    // panic cast to a worker that is still dying from the previous one would be lost with
    // its mailbox.
    let restarted = |c: Client, node: &'static str, at_least: u64| async move {
        let tree = c.get("/actors").await.body;
        let store = tree["actors"][0]["children"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == "store")?
            .clone();
        let restarts: u64 = store["children"]
            .as_array()?
            .iter()
            .filter_map(|w| w["restarts"].as_u64())
            .sum();
        let all_running = store["children"]
            .as_array()?
            .iter()
            .all(|w| w["state"] == "running");
        (restarts >= at_least && all_running).then_some(format!("{node}: {restarts} restarts"))
    };
    for round in 1..=3 {
        assert!(orders.inject_store_panic());
        assert!(invoices.inject_store_panic());
        eventually("orders workers restarted", Duration::from_secs(10), || {
            restarted(oc.clone(), "orders", round)
        })
        .await;
        eventually(
            "invoices workers restarted",
            Duration::from_secs(10),
            || restarted(ic.clone(), "invoices", round),
        )
        .await;
    }
    let metrics = oc.get("/metrics").await.text;
    assert!(
        metrics.contains("actor_restarts_total{actor=\"orders-node/store/worker-"),
        "{metrics}"
    );

    let order = create_order(&oc).await;
    wait_status(&oc, order["id"].as_str().unwrap(), "invoiced").await;
    assert_eq!(oc.get("/health/ready").await.status, 200);
    orders.shutdown().await;
    invoices.shutdown().await;
}

#[tokio::test]
async fn closing_the_broker_connections_under_the_nodes_they_recover_by_themselves() {
    let env = TestEnv::new();
    let (invoices, ic) = spawn_invoices(&env).await;
    let (orders, oc) = spawn_orders(&env, &[]).await;
    let first = create_order(&oc).await;
    wait_status(&oc, first["id"].as_str().unwrap(), "invoiced").await;

    env.close_broker_connections().await;
    // Accepted while the links reconnect: the outbox holds the event.
    let second = create_order(&oc).await;
    wait_status(&oc, second["id"].as_str().unwrap(), "invoiced").await;
    for c in [&oc, &ic] {
        let metrics = c.get("/metrics").await.text;
        // Two connections per node (publish, consume), each connected again.
        let connects = metric(&metrics, "amqp_connects_total", &[("outcome", "ok")]).unwrap_or(0.0);
        assert!(connects >= 4.0, "expected a reconnect:\n{metrics}");
    }
    assert_eq!(
        invoices_of(&ic, second["id"].as_str().unwrap()).await.len(),
        1
    );
    orders.shutdown().await;
    invoices.shutdown().await;
}

#[tokio::test]
async fn publishing_and_consuming_have_their_own_connections_so_one_failing_leaves_the_other() {
    let env = TestEnv::new();
    let (invoices, _) = spawn_invoices(&env).await;
    invoices.shutdown().await;
    // Long heartbeats: on a loaded machine a missed 2 s heartbeat could drop the other
    // connection too, which is not what this test is about.
    let (orders, oc) = spawn_orders(&env, &[("AMQP_HEARTBEAT", "60s")]).await;
    let connects = |m: &str, link: &str| {
        metric(
            m,
            "amqp_connects_total",
            &[("link", link), ("outcome", "ok")],
        )
        .unwrap_or(0.0)
    };
    // Each link in turn loses its connection; the other never notices.
    for (failing, other) in [("publish", "consume"), ("consume", "publish")] {
        let connection_of = |link: &str| {
            let env = &env;
            let name = format!("orders-node {link}");
            async move {
                eventually(&name, Duration::from_secs(10), || async {
                    let c = env.broker_connections(&name).await;
                    (c.len() == 1).then(|| c[0].clone())
                })
                .await
            }
        };
        let doomed = connection_of(failing).await;
        let kept = connection_of(other).await;
        let before = oc.get("/metrics").await.text;
        let (failing_before, other_before) = (connects(&before, failing), connects(&before, other));
        env.close_broker_connection(&doomed).await;
        eventually(
            &format!("the {failing} link reconnected"),
            Duration::from_secs(30),
            || async {
                let m = oc.get("/metrics").await.text;
                let up = metric(&m, "amqp_connection_up", &[]).unwrap_or(0.0);
                (connects(&m, failing) > failing_before && up == 2.0).then_some(())
            },
        )
        .await;
        let m = oc.get("/metrics").await.text;
        assert_eq!(
            connects(&m, other),
            other_before,
            "the {other} link reconnected too"
        );
        assert!(
            env.broker_connections(&format!("orders-node {other}"))
                .await
                .contains(&kept),
            "the {other} link's connection changed"
        );
    }
    // Both sides still work: an order's event is published and its invoice consumed.
    let (invoices, _) = spawn_invoices(&env).await;
    let order = create_order(&oc).await;
    wait_status(&oc, order["id"].as_str().unwrap(), "invoiced").await;
    orders.shutdown().await;
    invoices.shutdown().await;
}

#[tokio::test]
async fn orders_accepted_before_a_sigkill_are_all_invoiced_exactly_once() {
    let env = TestEnv::new();
    let port = free_port();
    let mut process =
        NodeProcess::start(env!("CARGO_BIN_EXE_orders-node"), &env.vars("orders"), port);
    process.wait_up().await;
    let oc = Client::new(process.addr);

    let requests = (0..25).map(|_| {
        let oc = oc.clone();
        async move { oc.post_json("/orders", &testkit::order_body()).await }
    });
    let replies = futures_util::future::join_all(requests).await;
    // SIGKILL right after the 201s: no graceful anything.
    process.sigkill();
    let accepted: Vec<String> = replies
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(accepted.len(), 25, "all were accepted before the kill");

    let restarted =
        NodeProcess::start(env!("CARGO_BIN_EXE_orders-node"), &env.vars("orders"), port);
    restarted.wait_up().await;
    let (invoices, ic) = spawn_invoices(&env).await;
    for id in &accepted {
        wait_status(&oc, id, "invoiced").await;
    }
    for id in &accepted {
        assert_eq!(
            invoices_of(&ic, id).await.len(),
            1,
            "exactly one invoice for {id}"
        );
    }
    let all = ic.get("/invoices?limit=200").await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 25);
    invoices.shutdown().await;
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_and_nothing_accepted_is_lost() {
    let env = TestEnv::new();
    let mut vars = env.vars("orders");
    vars.set("SHUTDOWN_GRACE", "5s");
    let mut process = NodeProcess::start(env!("CARGO_BIN_EXE_orders-node"), &vars, free_port());
    process.wait_up().await;
    let oc = Client::new(process.addr);
    oc.wait_broker_connected().await;
    let amqp = env.amqp().await;
    let mut published = amqp
        .watch(contracts::topology::ORDERS_EXCHANGE, "order.created")
        .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(create_order(&oc).await["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        process.sigterm(Duration::from_secs(10)).await,
        Some(0),
        "graceful exit with status 0"
    );
    // Every accepted order's event left before or during shutdown (the relay's last pass).
    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        let d = tokio::time::timeout(Duration::from_secs(10), published.recv())
            .await
            .expect("all events published")
            .unwrap();
        let contracts::Event::OrderCreated(e) =
            contracts::decode("order.created", &d.data).unwrap()
        else {
            panic!()
        };
        seen.push(e.order_id.to_string());
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn the_healthcheck_command_reports_readiness_for_container_health_checks() {
    let env = TestEnv::new();
    let process = NodeProcess::start(
        env!("CARGO_BIN_EXE_orders-node"),
        &env.vars("orders"),
        free_port(),
    );
    process.wait_up().await;
    let check = |addr: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_orders-node"))
            .arg("healthcheck")
            .env("HTTP_ADDR", addr)
            .status()
            .expect("healthcheck runs")
    };
    let ready = eventually("healthcheck passes", Duration::from_secs(10), || async {
        check(process.addr.to_string()).success().then_some(())
    })
    .await;
    assert_eq!(ready, ());
    // Listening on all interfaces, as in a container: it probes loopback.
    assert!(
        !check(format!("0.0.0.0:{}", free_port())).success(),
        "nothing listens there"
    );
    assert!(check(format!("0.0.0.0:{}", process.addr.port())).success());
}

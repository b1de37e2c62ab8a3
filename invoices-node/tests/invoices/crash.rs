//! SIGKILL of the real invoices-node process while it consumes: no invoice is lost and
//! none is duplicated.

use std::collections::HashSet;
use std::time::Duration;

use testkit::{Client, NodeProcess, TestEnv, eventually, free_port};
use uuid::Uuid;

use crate::{invoices_of, order_created};

#[tokio::test]
async fn a_sigkill_mid_stream_loses_and_duplicates_no_invoice() {
    let env = TestEnv::new();
    let amqp = env.amqp().await;
    let vars = env.vars("invoices");
    let port = free_port();
    let mut process = NodeProcess::start(env!("CARGO_BIN_EXE_invoices-node"), &vars, port);
    process.wait_up().await;
    let c = Client::new(process.addr);
    c.wait_broker_connected().await;

    let orders: Vec<Uuid> = (0..60).map(|_| Uuid::new_v4()).collect();
    for id in &orders {
        amqp.publish_event(&order_created(*id)).await;
    }
    // Kill while it is part-way through.
    eventually("some invoices issued", Duration::from_secs(15), || async {
        (c.get("/invoices?limit=200").await.body["items"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0)
            >= 5)
            .then_some(())
    })
    .await;
    process.sigkill();

    let restarted = NodeProcess::start(env!("CARGO_BIN_EXE_invoices-node"), &vars, port);
    restarted.wait_up().await;
    let all = eventually("every order invoiced", Duration::from_secs(30), || async {
        let items = c.get("/invoices?limit=200").await.body["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (items.len() >= orders.len()).then_some(items)
    })
    .await;
    assert_eq!(all.len(), orders.len(), "no duplicates");
    let invoiced: HashSet<String> = all
        .iter()
        .map(|i| i["order_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(invoiced, orders.iter().map(Uuid::to_string).collect());
    for id in orders.iter().take(5) {
        assert_eq!(invoices_of(&c, *id).await.len(), 1);
    }
}

//! Hostile clients over raw TCP: slow senders, idle connections, odd request lines,
//! oversized heads, and a SIGTERM under load. None may stop the node, take its slots, get a
//! panic or a bare answer, or lose a request it already received.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use testkit::{Client, NodeProcess, TestEnv, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{create_order, park_a_cancel, spawn_orders};

/// Sends `head` (and nothing more) and returns the connection.
async fn send(addr: SocketAddr, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads until the server closes or `within` passes; the text read.
async fn read_all(stream: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> Option<u16> {
    response.split(' ').nth(1)?.parse().ok()
}

#[tokio::test]
async fn slow_senders_neither_hold_the_slots_nor_stay_forever() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(
        &env,
        &[
            ("HTTP_MAX_IN_FLIGHT", "4"),
            ("HTTP_BODY_TIMEOUT", "1s"),
            ("HTTP_HEADER_TIMEOUT", "1s"),
        ],
    )
    .await;
    let addr = node.addr();
    // Ten clients announce a body and trickle it: more than the four in-flight slots.
    let mut tricklers = Vec::new();
    for _ in 0..10 {
        let mut s = send(
            addr,
            "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{",
        )
        .await;
        s.write_all(b" ").await.unwrap();
        tricklers.push(s);
    }
    // A slowloris that never finishes its head, and an idle connection.
    let mut slowloris = send(addr, "GET /orders HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    // Meanwhile everyone else is served.
    for _ in 0..3 {
        create_order(&c).await;
    }
    // The tricklers get a 408 once the body timeout passes; the head-less ones are closed.
    for s in &mut tricklers {
        let answer = read_all(s, Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), Some(408), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
    }
    let started = Instant::now();
    read_all(&mut slowloris, Duration::from_secs(5)).await;
    read_all(&mut idle, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slowloris and idle connections were closed"
    );
    assert_eq!(c.get("/health/ready").await.status, 200);
    node.shutdown().await;
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_wait_instead_of_piling_up() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(
        &env,
        &[("HTTP_MAX_CONNECTIONS", "2"), ("HTTP_HEADER_TIMEOUT", "2s")],
    )
    .await;
    // The client of spawn_orders may hold a keep-alive connection; let it go idle-closed.
    drop(c);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let addr = node.addr();
    let _first = send(addr, "GET /health HTTP/1.1\r\nhost: x\r\n").await;
    let _second = send(addr, "GET /health HTTP/1.1\r\nhost: x\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = send(
        addr,
        "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let early = read_all(&mut third, Duration::from_millis(700)).await;
    assert_eq!(
        early, "",
        "a third connection was served past the cap of two"
    );
    // Once the two holders time out, the third is served.
    let answer = read_all(&mut third, Duration::from_secs(5)).await;
    assert_eq!(status_of(&answer), Some(200), "{answer}");
    node.shutdown().await;
}

#[tokio::test]
async fn odd_request_lines_and_oversized_heads_get_problem_json_not_a_panic() {
    let env = TestEnv::new();
    let (node, c) = spawn_orders(&env, &[]).await;
    let addr = node.addr();
    let long_uri = format!("/orders?customer_id={}", "a".repeat(10 * 1024));
    let many_headers: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    for (request, status) in [
        (
            "CONNECT 127.0.0.1:80 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_owned(),
            400,
        ),
        (
            "GET orders HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_owned(),
            400,
        ),
        (
            format!("GET {long_uri} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
            414,
        ),
        (
            format!("GET /orders HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{many_headers}\r\n"),
            431,
        ),
        (
            format!(
                "GET /orders HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: {}\r\n\r\n",
                "b".repeat(20 * 1024)
            ),
            431,
        ),
    ] {
        let mut s = send(addr, &request).await;
        let answer = read_all(&mut s, Duration::from_secs(3)).await;
        let line = request.lines().next().unwrap_or_default();
        assert_eq!(status_of(&answer), Some(status), "{line}: {answer}");
        assert!(
            answer.contains("application/problem+json"),
            "{line}: {answer}"
        );
    }
    // The node is unharmed.
    create_order(&c).await;
    assert_eq!(c.get("/health/ready").await.status, 200);
    node.shutdown().await;

    // The limits are the operator's to set.
    let (node, _) = spawn_orders(
        &env,
        &[("HTTP_MAX_URI_BYTES", "256"), ("HTTP_MAX_HEADERS", "10")],
    )
    .await;
    let mut s = send(
        node.addr(),
        &format!(
            "GET /orders?x={} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            "a".repeat(300)
        ),
    )
    .await;
    assert_eq!(
        status_of(&read_all(&mut s, Duration::from_secs(3)).await),
        Some(414)
    );
    let eleven: String = (0..10).map(|i| format!("x-h{i}: v\r\n")).collect();
    let mut s = send(
        node.addr(),
        &format!("GET /orders HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{eleven}\r\n"),
    )
    .await;
    assert_eq!(
        status_of(&read_all(&mut s, Duration::from_secs(3)).await),
        Some(431)
    );
    node.shutdown().await;
}

#[tokio::test]
async fn sigterm_closes_the_listener_at_once_and_answers_every_request_already_received() {
    let env = TestEnv::new();
    let mut vars = env.vars("orders");
    vars.set("STORE_WORKERS", "1");
    vars.set("SHUTDOWN_GRACE", "10s");
    let port = free_port();
    let mut process = NodeProcess::start(env!("CARGO_BIN_EXE_orders-node"), &vars, port);
    process.wait_up().await;
    let c = Client::new(process.addr);
    c.wait_broker_connected().await;
    let blocker = create_order(&c).await["id"].as_str().unwrap().to_owned();
    // An idle keep-alive connection, open at the signal.
    let mut idle = send(process.addr, "GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();

    // Park the only store worker, so requests stay in flight across the signal.
    let db = env.pg(&env.database("orders")).await;
    let (holder, cancel) = park_a_cancel(&env, &c, &db, &blocker).await;
    let creates: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.post_json("/orders", &testkit::order_body()).await })
        })
        .collect();
    eventually("20 creates in flight", Duration::from_secs(10), || async {
        let m = reqwest::get(format!("http://{}/metrics", process.addr))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (testkit::metric(&m, "http_requests_in_flight", &[]) == Some(21.0)).then_some(())
    })
    .await;

    std::process::Command::new("kill")
        .args(["-TERM", &process.id().to_string()])
        .status()
        .unwrap();
    // The listener closes at once: a new connection is refused, not queued to be reset.
    eventually(
        "new connections refused",
        Duration::from_secs(3),
        || async {
            TcpStream::connect(process.addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    // The idle keep-alive connection is closed politely (EOF), not reset.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(_))), "idle connection: {closed:?}");

    // Every request already received is answered once the worker is free again.
    holder.rollback().await.unwrap();
    assert_eq!(cancel.await.unwrap().status, 200);
    for create in creates {
        let reply = create.await.unwrap();
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    assert_eq!(process.wait_exit(Duration::from_secs(15)).await, Some(0));
    db.close().await;
}

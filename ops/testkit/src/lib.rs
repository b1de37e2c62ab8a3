//! Test support shared by every integration test: each test gets its own PostgreSQL
//! databases and its own RabbitMQ vhost (so the suite runs in parallel and one test's
//! faults never reach another), removed again when the [`TestEnv`] drops.
//!
//! Everything here talks to the real services on localhost; nothing is mocked.

pub mod gate;
pub mod otlp;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use actors::config::Vars;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs `rabbitmqctl` without blocking the test's runtime, and fails the test if it fails.
///
/// Use this (not [`rabbitmqctl`]) once a node runs in the test's process: the node's tasks
/// share the test's runtime, and `rabbitmqctl` (an Erlang VM starting) takes seconds on a
/// loaded machine. Called in a loop from a blocking call, it starved an in-process node
/// whose broker connection was still being opened, so that connection never showed up.
pub async fn rabbitmqctl_async(args: &[&str]) -> String {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await;
    rabbitmqctl_stdout(args, out)
}

/// Runs `rabbitmqctl` and fails the test if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    rabbitmqctl_stdout(args, Command::new("rabbitmqctl").args(args).output());
}

/// What `rabbitmqctl` printed; fails the test if it did not run or failed.
fn rabbitmqctl_stdout(args: &[&str], out: std::io::Result<std::process::Output>) -> String {
    let out = out.expect("rabbitmqctl runs (is RabbitMQ installed?)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One test's isolated slice of the real services.
pub struct TestEnv {
    pub id: String,
    pub vhost: String,
    databases: Mutex<Vec<String>>,
}

impl TestEnv {
    /// Creates a fresh vhost (databases are created by the nodes themselves on start-up).
    pub fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let vhost = format!("t-{id}");
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        Self {
            id,
            vhost,
            databases: Mutex::new(Vec::new()),
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.vhost)
    }

    /// This env's vhost reached through `gate` (see [`gate::Gate`]).
    pub fn amqp_url_via(&self, gate: &gate::Gate) -> String {
        format!("amqp://guest:guest@{}/{}", gate.addr, self.vhost)
    }

    /// The database name of `node` in this env (always the same), dropped with the env.
    pub fn database(&self, node: &str) -> String {
        let name = format!("t_{}_{}", self.id, node.replace('-', "_"));
        let mut dbs = self.databases.lock().expect("env lock not poisoned");
        if !dbs.contains(&name) {
            dbs.push(name.clone());
        }
        name
    }

    pub fn database_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{db}")
    }

    /// Variables for a node in this env: its own database, this vhost, port 0, and short
    /// timings so tests are quick.
    pub fn vars(&self, node: &str) -> Vars {
        let db = self.database(node);
        Vars::from_pairs([
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("DATABASE_URL", self.database_url(&db)),
            ("DATABASE_POOL_SIZE", "4".to_owned()),
            ("AMQP_URL", self.amqp_url()),
            ("AMQP_HEARTBEAT", "2s".to_owned()),
            ("RECONNECT_BACKOFF_MIN", "50ms".to_owned()),
            ("RECONNECT_BACKOFF_MAX", "1s".to_owned()),
            ("OUTBOX_POLL_INTERVAL", "200ms".to_owned()),
            ("SHUTDOWN_GRACE", "3s".to_owned()),
            ("CONSUMER_MAX_ATTEMPTS", "3".to_owned()),
        ])
    }

    /// Closes every client connection to this test's vhost (and no other).
    pub async fn close_broker_connections(&self) {
        rabbitmqctl_async(&[
            "close_all_connections",
            "-p",
            &self.vhost,
            "test: connections closed under the node",
        ])
        .await;
    }

    /// The broker's ids of the running connections to this test's vhost whose client name
    /// (a node names its connections `<node> publish` and `<node> consume`) contains
    /// `client`: a node shut down just before may still be listed while its connections
    /// close.
    pub async fn broker_connections(&self, client: &str) -> Vec<String> {
        let out = rabbitmqctl_async(&[
            "list_connections",
            "-q",
            "-p",
            &self.vhost,
            "pid",
            "state",
            "client_properties",
        ])
        .await;
        out.lines()
            .map(str::trim)
            .filter(|l| l.starts_with('<') && l.contains("running") && l.contains(client))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// Closes one client connection of this test's vhost, by its broker id.
    pub async fn close_broker_connection(&self, id: &str) {
        rabbitmqctl_async(&["close_connection", id, "test: one connection closed"]).await;
    }

    pub async fn amqp(&self) -> Amqp {
        let conn = Connection::connect(&self.amqp_url(), ConnectionProperties::default())
            .await
            .expect("test AMQP connection");
        let channel = conn.create_channel().await.expect("test channel");
        Amqp {
            _conn: conn,
            channel,
        }
    }

    /// Makes `node`'s database refuse new connections (and drops the existing ones), or
    /// accept them again: an outage scoped to this test alone.
    pub async fn set_database_accepting(&self, node: &str, accepting: bool) {
        let db = self.database(node);
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
            .await
            .expect("admin connection");
        let sql = format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS {accepting}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect("ALTER DATABASE");
        if !accepting {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&db)
            .execute(&admin)
            .await
            .expect("terminate sessions");
        }
        admin.close().await;
    }

    /// Waits until `n` sessions of `node`'s database wait on a lock: a request parked behind
    /// a lock the test holds.
    pub async fn wait_for_lock_waiters(&self, node: &str, n: i64) {
        let db = self.database(node);
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
            .await
            .expect("admin connection");
        eventually("sessions waiting on a lock", Duration::from_secs(10), || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            )
            .bind(&db)
            .fetch_one(&admin)
            .await
            .ok()?;
            (waiting == n).then_some(())
        })
        .await;
        admin.close().await;
    }

    /// Makes every row inserted into `table` of `node`'s database whose `column` equals
    /// `value` fail, with a trigger: a real database failure for that row only.
    pub async fn reject_rows(&self, node: &str, table: &str, column: &str, value: &str) {
        let db = self.pg(&self.database(node)).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE FUNCTION reject_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.{column}::text = '{value}' THEN RAISE EXCEPTION 'rejected by the test'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER reject_{table} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION reject_{table}();"
        )))
        .execute(&db)
        .await
        .expect("install the rejecting trigger");
        db.close().await;
    }

    /// A direct connection to one of this env's databases.
    pub async fn pg(&self, db: &str) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url(db))
            .await
            .expect("test database connection")
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.vhost])
            .output();
        for db in self.databases.lock().map(|d| d.clone()).unwrap_or_default() {
            let _ = Command::new("psql")
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                ])
                .arg(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .output();
        }
    }
}

/// A test's own AMQP client, to publish raw messages and watch queues.
pub struct Amqp {
    _conn: Connection,
    pub channel: Channel,
}

impl Amqp {
    /// Publishes `body` as the contract does (properties and headers), or as a test wants to
    /// break it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
    }

    /// Publishes a contract event with the contract's properties.
    pub async fn publish_event(&self, event: &contracts::Event) {
        let mut headers = FieldTable::default();
        headers.insert(
            contracts::topology::CONTRACT_VERSION_HEADER.into(),
            AMQPValue::LongLongInt(1),
        );
        let props = BasicProperties::default()
            .with_content_type(contracts::topology::CONTENT_TYPE.into())
            .with_message_id(event.event_id().to_string().into())
            .with_type(event.routing_key().into())
            .with_delivery_mode(2)
            .with_headers(headers);
        self.publish(
            event.exchange(),
            event.routing_key(),
            &contracts::encode(event),
            props,
        )
        .await;
    }

    /// Declares an exclusive queue bound to `exchange`/`pattern` and returns a receiver of
    /// its deliveries (routing key, decoded event, properties).
    pub async fn watch(
        &self,
        exchange: &str,
        pattern: &str,
    ) -> tokio::sync::mpsc::UnboundedReceiver<lapin::message::Delivery> {
        let q = self
            .channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare watch queue");
        // The topology may not exist yet if no node has connected.
        self.channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        self.channel
            .queue_bind(
                q.name().clone(),
                exchange.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind watch queue");
        let mut consumer = self
            .channel
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume watch queue");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                if tx.send(delivery).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Messages ready in `queue` right now.
    pub async fn ready_count(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .unwrap_or(0)
    }
}

/// Polls `check` every 25 ms until it yields `Some`, failing the test after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An HTTP response as tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts this is a problem+json of `status` and returns it.
    #[track_caller]
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text
        );
        for field in ["type", "title", "status", "detail"] {
            assert!(
                self.body.get(field).is_some(),
                "problem lacks {field}: {}",
                self.text
            );
        }
        assert_eq!(self.body["status"], status);
        &self.body
    }
}

/// A plain HTTP client for one node.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Waits until the node reports its broker link connected (topology declared).
    pub async fn wait_broker_connected(&self) {
        eventually(
            "the node's broker link",
            Duration::from_secs(15),
            || async {
                (self.get("/health/ready").await.body["checks"]["broker"] == "connected")
                    .then_some(())
            },
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn post_empty(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::POST, path)).await
    }
}

/// The value of one sample in a Prometheus text exposition: the metric `name` whose labels
/// include all of `labels` (label order does not matter). Sums when several match.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        let has_all = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        if has_all {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}

/// The hex of `-400000000000000000_00000000-0000-0000-0000-000000000000` (the old cursor
/// format around a timestamp PostgreSQL cannot store), and its versioned equivalent.
pub const CRAFTED_CURSORS: [&str; 2] = [
    "2d3430303030303030303030303030303030305f30303030303030302d303030302d303030302d303030302d303030303030303030303030",
    "c1fa72ea1e89d8000000000000000000000000000000000000",
];

/// `event` as a store receives it from the consumer: a first delivery, no cause, no span.
pub fn incoming(event: &contracts::Event) -> actors::amqp::Incoming {
    actors::amqp::Incoming {
        event: event.clone(),
        delivered: actors::amqp::Delivered {
            cause: Default::default(),
            redelivered: false,
            span: tracing::Span::none(),
        },
    }
}

/// A valid order body.
pub fn order_body() -> Value {
    serde_json::json!({
        "customer_id": uuid::Uuid::new_v4().to_string(),
        "currency": "BRL",
        "items": [{"sku": "BOOK-42", "quantity": 2, "unit_price_cents": 1500}]
    })
}

/// A node running as a real process; killed on drop so a failing test leaves nothing behind.
pub struct NodeProcess {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl NodeProcess {
    /// Starts `binary` with exactly `vars` (plus `PATH`) listening on `port`.
    pub fn start(binary: &str, vars: &Vars, port: u16) -> Self {
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in vars.iter() {
            cmd.env(k, v);
        }
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .expect("a loopback address");
        cmd.env("HTTP_ADDR", addr.to_string())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        Self {
            child: cmd.spawn().expect("node binary starts"),
            addr,
        }
    }

    /// Waits until `/health` answers.
    pub async fn wait_up(&self) {
        let url = format!("http://{}/health", self.addr);
        eventually("node process up", Duration::from_secs(30), || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status() == 200)
                .then_some(())
        })
        .await
    }

    /// SIGKILL: no graceful anything.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// The process id, e.g. to signal it while requests are in flight.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit code within `within` (None if it did not exit in time).
    pub async fn sigterm(&mut self, within: Duration) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        self.wait_exit(within).await
    }

    /// The exit code once the process exits within `within` (None if it did not).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

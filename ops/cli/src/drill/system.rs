//! The system under drill: replicas of both nodes started here on a fresh database and
//! vhost (local mode), or an existing deployment given by URLs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, PgPool};
use tokio::process::Child;

use crate::OpsError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    Orders,
    Invoices,
}

impl Node {
    pub fn name(self) -> &'static str {
        match self {
            Node::Orders => "orders-node",
            Node::Invoices => "invoices-node",
        }
    }
}

/// One running instance of a node.
pub struct Replica {
    pub node: Node,
    pub index: usize,
    pub url: String,
    /// Local mode: the process and how to start it again.
    process: Option<LocalProcess>,
}

struct LocalProcess {
    child: Option<Child>,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Replica {
    pub fn label(&self) -> String {
        format!("{}#{}", self.node.name(), self.index)
    }

    pub fn is_local(&self) -> bool {
        self.process.is_some()
    }

    fn spawn(&mut self) -> Result<(), OpsError> {
        let Some(p) = &mut self.process else {
            return Ok(());
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(OpsError::io(format!("cannot open {}", p.log.display())))?;
        let err = log
            .try_clone()
            .map_err(OpsError::io("cannot share the log file"))?;
        let child = tokio::process::Command::new(&p.binary)
            .envs(p.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log)
            .stderr(err)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(OpsError::io(format!("cannot start {}", p.binary.display())))?;
        p.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the process dies with whatever it was doing.
    pub async fn kill(&mut self) {
        if let Some(child) = self.process.as_mut().and_then(|p| p.child.as_mut()) {
            let _ = child.kill().await;
        }
        if let Some(p) = &mut self.process {
            p.child = None;
        }
    }

    /// SIGTERM, then the exit code once it stopped (`None`: not within `within`, then killed).
    pub async fn terminate(&mut self, within: Duration) -> Option<i32> {
        let child = self.process.as_mut().and_then(|p| p.child.as_mut())?;
        let pid = child.id()?;
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let code = match tokio::time::timeout(within, child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = child.kill().await;
                None
            }
        };
        if let Some(p) = &mut self.process {
            p.child = None;
        }
        code
    }

    pub fn restart(&mut self) -> Result<(), OpsError> {
        self.spawn()
    }
}

/// Where the drill runs: its replicas, the broker and both databases.
pub struct System {
    pub replicas: Vec<Replica>,
    pub amqp_url: String,
    pub orders_db: String,
    pub invoices_db: String,
    /// Local mode: the vhost and databases made for the drill (removed at the end).
    pub scratch: Option<Scratch>,
    pub http: reqwest::Client,
}

pub struct Scratch {
    pub vhost: String,
    pub databases: Vec<String>,
    pub admin_db: String,
    pub logs: PathBuf,
}

/// How to start replicas locally.
pub struct LocalPlan<'a> {
    pub replicas: usize,
    pub bin_dir: &'a Path,
    pub pg_admin_url: &'a str,
    pub amqp_base: &'a str,
    pub logs: PathBuf,
}

impl System {
    pub fn remote(
        orders_urls: Vec<String>,
        invoices_urls: Vec<String>,
        amqp_url: String,
        orders_db: String,
        invoices_db: String,
    ) -> Result<Self, OpsError> {
        let replicas = orders_urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| (Node::Orders, i, url))
            .chain(
                invoices_urls
                    .into_iter()
                    .enumerate()
                    .map(|(i, url)| (Node::Invoices, i, url)),
            )
            .map(|(node, index, url)| Replica {
                node,
                index,
                url: url.trim_end_matches('/').to_owned(),
                process: None,
            })
            .collect();
        Ok(Self {
            replicas,
            amqp_url,
            orders_db,
            invoices_db,
            scratch: None,
            http: http_client()?,
        })
    }

    /// A fresh vhost and two fresh databases, and `replicas` processes of each node on them
    /// with fault injection on.
    pub async fn local(plan: LocalPlan<'_>) -> Result<Self, OpsError> {
        let id = format!(
            "{}_{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            std::process::id()
        );
        let vhost = format!("drill-{id}");
        for binary in ["orders-node", "invoices-node"] {
            if !plan.bin_dir.join(binary).is_file() {
                return Err(OpsError::Setup(format!(
                    "{} not found: build it first (cargo build --release -p orders-node -p invoices-node) or pass --bin-dir",
                    plan.bin_dir.join(binary).display()
                )));
            }
        }
        rabbitmqctl(&["add_vhost", &vhost])?;
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])?;
        std::fs::create_dir_all(&plan.logs).map_err(OpsError::io(format!(
            "cannot create {}",
            plan.logs.display()
        )))?;
        let amqp_url = format!("{}/{vhost}", plan.amqp_base.trim_end_matches('/'));
        let db_url = |node: &str| {
            let base = plan
                .pg_admin_url
                .rsplit_once('/')
                .map_or(plan.pg_admin_url, |(b, _)| b);
            format!("{base}/drill_{id}_{node}?sslmode=disable")
        };
        let orders_db = db_url("orders");
        let invoices_db = db_url("invoices");
        // Made here rather than by the replicas, which would race to create them.
        let admin = PgPool::connect(plan.pg_admin_url).await?;
        for node in ["orders", "invoices"] {
            let create = format!(
                "CREATE DATABASE {}",
                quote_ident(&format!("drill_{id}_{node}"))
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                .execute(&admin)
                .await?;
        }
        admin.close().await;
        let mut replicas = Vec::new();
        for (node, db) in [(Node::Orders, &orders_db), (Node::Invoices, &invoices_db)] {
            for index in 0..plan.replicas {
                let port = free_port()?;
                let env = [
                    ("HTTP_ADDR", format!("127.0.0.1:{port}")),
                    ("DATABASE_URL", db.clone()),
                    ("AMQP_URL", amqp_url.clone()),
                    ("FAULT_INJECTION", "on".into()),
                    ("AMQP_HEARTBEAT", "2s".into()),
                    ("RECONNECT_BACKOFF_MAX", "2s".into()),
                    ("SHUTDOWN_GRACE", "5s".into()),
                    ("RUST_LOG", "warn".into()),
                    ("PATH", std::env::var("PATH").unwrap_or_default()),
                ]
                .map(|(k, v)| (k.to_owned(), v))
                .to_vec();
                let mut replica = Replica {
                    node,
                    index,
                    url: format!("http://127.0.0.1:{port}"),
                    process: Some(LocalProcess {
                        child: None,
                        binary: plan.bin_dir.join(node.name()),
                        env,
                        log: plan.logs.join(format!("{}-{index}.log", node.name())),
                    }),
                };
                replica.spawn()?;
                replicas.push(replica);
            }
        }
        Ok(Self {
            replicas,
            amqp_url,
            orders_db,
            invoices_db,
            scratch: Some(Scratch {
                vhost,
                databases: vec![format!("drill_{id}_orders"), format!("drill_{id}_invoices")],
                admin_db: plan.pg_admin_url.to_owned(),
                logs: plan.logs,
            }),
            http: http_client()?,
        })
    }

    pub fn replicas_of(&self, node: Node) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().filter(move |r| r.node == node)
    }

    /// Whether `/health/ready` answers 200.
    pub async fn is_ready(&self, replica: &Replica) -> bool {
        let url = format!("{}/health/ready", replica.url);
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// Waits until every replica is ready; the time it took, or `None` past `within`.
    pub async fn wait_all_ready(&self, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        loop {
            let mut all = true;
            for r in &self.replicas {
                if !self.is_ready(r).await {
                    all = false;
                    break;
                }
            }
            if all {
                return Some(started.elapsed());
            }
            if started.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A pool on one node's database (superuser in local mode).
    pub async fn pool(&self, node: Node) -> Result<PgPool, OpsError> {
        let url = match node {
            Node::Orders => &self.orders_db,
            Node::Invoices => &self.invoices_db,
        };
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        Ok(PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.disable_statement_logging())
            .await?)
    }

    /// Removes what local mode made; leaves the logs when asked to keep them.
    pub async fn tear_down(mut self) {
        for r in &mut self.replicas {
            r.terminate(Duration::from_secs(15)).await;
        }
        let Some(scratch) = self.scratch.take() else {
            return;
        };
        let _ = rabbitmqctl(&["delete_vhost", &scratch.vhost]);
        if let Ok(admin) = PgPool::connect(&scratch.admin_db).await {
            for db in &scratch.databases {
                let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(db));
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&admin)
                    .await;
            }
            admin.close().await;
        }
    }
}

/// A PostgreSQL identifier, quoted (a database name may come from the operator's URL).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn http_client() -> Result<reqwest::Client, OpsError> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(64)
        .build()?)
}

fn free_port() -> Result<u16, OpsError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(OpsError::io("cannot find a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(OpsError::io("cannot find a free port"))?
        .port())
}

/// Runs `rabbitmqctl` (local broker, as root).
pub fn rabbitmqctl(args: &[&str]) -> Result<String, OpsError> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(OpsError::io(
            "cannot run rabbitmqctl (is RabbitMQ installed here?)",
        ))?;
    if !out.status.success() {
        return Err(OpsError::Setup(format!(
            "rabbitmqctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

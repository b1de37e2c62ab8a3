//! Building and running a node: the wiring both nodes share.
//!
//! ```text
//! <node> (root supervisor)
//! ├── store        (nested supervisor of N store workers — the node's domain)
//! ├── amqp-publish (the publishing connection: reconnects, topology)
//! ├── amqp-consume (the consuming connection, separate so one side's failure — e.g. the
//! │                 broker closing a publisher's connection — cannot take the other down)
//! ├── outbox-relay (outbox → broker with publisher confirms, on amqp-publish)
//! ├── consumer     (queue → handler → store workers → ack, on amqp-consume)
//! └── http-intake  (warp server → store workers)
//! ```
//! Children start in that order and stop in reverse: intake stops taking requests first,
//! the store stops last.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::sync::{Semaphore, watch};

use contracts::topology::ConsumedQueue;

use crate::amqp::{
    AmqpLink, BrokerState, Consumer, ConsumerArgs, ConsumerMsg, EventHandler, LinkArgs, LinkMsg,
};
use crate::config::CommonConfig;
use crate::faults::{FaultInjector, PanicOnce, Trigger};
use crate::http::{ConnectionLimits, HttpContext, HttpIntake, IntakeArgs, IntakeMsg, Routes};
use crate::metrics::Metrics;
use crate::relay::{OutboxNotifier, OutboxRelay, RelayArgs, RelayMsg};
use crate::supervision::{
    ActorState, ActorTree, ChildHandle, ChildSpec, Supervisor, SupervisorArgs, SupervisorMsg,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on HTTP_ADDR {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
    #[error("the actor tree failed to start: {0}")]
    Tree(String),
}

/// What the shared wiring hands the node's domain to build its part.
#[derive(Clone)]
pub struct NodeResources {
    pub pool: PgPool,
    /// Connections the hot path keeps between transactions (taken from `pool`).
    pub connections: crate::db::Connections,
    pub notifier: OutboxNotifier,
    pub metrics: Metrics,
    pub request_timeout: Duration,
    pub store: StoreSizing,
}

/// How the node's store workers are sized (from the common configuration).
#[derive(Debug, Clone, Copy)]
pub struct StoreSizing {
    /// `STORE_WORKERS`
    pub workers: usize,
    /// `STORE_BATCH_SIZE`: the most jobs a worker takes (and commits) at once.
    pub batch_size: usize,
    /// Jobs that may wait for a worker; beyond it, callers get a 503 at once.
    pub queue_capacity: usize,
}

/// The node's domain: its store workers, its routes, and its consumer's handler.
pub struct Domain {
    pub store_workers: Vec<ChildSpec>,
    /// Makes one store worker panic (fault injection).
    pub store_fault: Trigger,
    pub routes: Arc<dyn Routes>,
    pub handler: Arc<dyn EventHandler>,
}

/// A node's identity, what it consumes and what it publishes.
pub struct NodeSpec {
    pub name: &'static str,
    pub input: ConsumedQueue,
    /// The queue its events feed (the other node's input): the exchange and routing keys
    /// it publishes.
    pub output: ConsumedQueue,
    pub migrator: Migrator,
}

/// The actors `POST /faults/panic/{actor}` can crash, by their names in the tree.
fn fault_injector(
    store: Trigger,
    publish_link: &ChildHandle<LinkMsg>,
    consume_link: &ChildHandle<LinkMsg>,
    relay: &ChildHandle<RelayMsg>,
    consumer: &ChildHandle<ConsumerMsg>,
    intake: &ChildHandle<IntakeMsg>,
) -> FaultInjector {
    fn trigger<M: Send + 'static>(handle: &ChildHandle<M>, msg: fn() -> M) -> Trigger {
        let (handle, once) = (handle.clone(), PanicOnce::default());
        Arc::new(move || once.send(&handle, msg()))
    }
    FaultInjector::default()
        .with("store", store)
        .with("amqp-publish", trigger(publish_link, || LinkMsg::Panic))
        .with("amqp-consume", trigger(consume_link, || LinkMsg::Panic))
        .with("outbox-relay", trigger(relay, || RelayMsg::Panic))
        .with("consumer", trigger(consumer, || ConsumerMsg::Panic))
        .with("http-intake", trigger(intake, || IntakeMsg::Panic))
}

/// A node whose tree is running and whose HTTP socket is bound.
pub struct RunningNode {
    name: &'static str,
    addr: SocketAddr,
    root: ActorRef<SupervisorMsg>,
    join: tokio::task::JoinHandle<()>,
    tree: ActorTree,
    pool: PgPool,
    grace: Duration,
}

/// How many jobs may wait for the store workers: every request intake lets in, plus a few
/// batches per consumer lane.
pub fn queue_capacity(config: &CommonConfig) -> usize {
    config.http_max_in_flight + 4 * config.consumer_lanes
}

/// Connects, migrates, binds, and starts the supervision tree.
pub async fn start(
    spec: NodeSpec,
    config: &CommonConfig,
    domain: impl FnOnce(NodeResources) -> Domain,
) -> Result<RunningNode, StartError> {
    let pool = crate::db::connect_and_migrate(
        &config.database_url,
        config.database_pool_size,
        spec.migrator,
    )
    .await?;
    let listener = TcpListener::bind(config.http_addr).map_err(|source| StartError::Listen {
        addr: config.http_addr,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.http_addr,
        source,
    })?;

    let metrics = Metrics::new(spec.name);
    metrics.start_at_zero(spec.output.exchange, spec.output.routing_keys);
    let tree = ActorTree::default();
    let publish_link = ChildHandle::<LinkMsg>::default();
    let consume_link = ChildHandle::<LinkMsg>::default();
    let relay = ChildHandle::<RelayMsg>::default();
    let notifier = OutboxNotifier::new(relay.clone());
    let (publish_tx, publish_rx) = watch::channel(BrokerState::Connecting);
    let (consume_tx, consume_rx) = watch::channel(BrokerState::Connecting);
    let connections = crate::db::Connections::new(pool.clone());
    let resources = NodeResources {
        pool: pool.clone(),
        connections: connections.clone(),
        notifier: notifier.clone(),
        metrics: metrics.clone(),
        request_timeout: config.request_timeout,
        store: StoreSizing {
            workers: config.store_workers,
            batch_size: config.store_batch_size,
            queue_capacity: queue_capacity(config),
        },
    };
    let Domain {
        store_workers,
        store_fault,
        routes,
        handler,
    } = domain(resources);
    let consumer = ChildHandle::<ConsumerMsg>::default();
    let intake = ChildHandle::<IntakeMsg>::default();
    let faults = config.fault_injection.then(|| {
        fault_injector(
            store_fault,
            &publish_link,
            &consume_link,
            &relay,
            &consumer,
            &intake,
        )
    });

    let root_args = SupervisorArgs {
        path: spec.name.to_owned(),
        children: Vec::new(),
        policy: config.restart_policy,
        tree: tree.clone(),
        metrics: metrics.clone(),
    };
    let store = root_args.nested("store", store_workers);

    let link_args = |role: &'static str, state| LinkArgs {
        url: config.amqp_url.clone(),
        app_id: format!("{} {role}", spec.name),
        role,
        heartbeat: config.amqp_heartbeat,
        backoff_min: config.reconnect_backoff_min,
        backoff_max: config.reconnect_backoff_max,
        state,
        metrics: metrics.clone(),
    };
    let publish_args = link_args("publish", publish_tx);
    let consume_args = link_args("consume", consume_tx);
    let relay_args = RelayArgs {
        connections,
        link: publish_link.clone(),
        notifier,
        app_id: spec.name.to_owned(),
        batch_size: config.outbox_batch_size,
        concurrency: config.outbox_concurrency,
        poll_interval: config.outbox_poll_interval,
        retention: config.outbox_retention,
        backoff_min: config.reconnect_backoff_min,
        backoff_max: config.reconnect_backoff_max,
        metrics: metrics.clone(),
    };
    let consumer_args = ConsumerArgs {
        input: spec.input,
        consumer_tag: format!("{}-{}", spec.name, uuid::Uuid::now_v7()),
        link: consume_link.clone(),
        handler,
        prefetch: config.amqp_prefetch,
        lanes: config.consumer_lanes,
        batch_size: config.consumer_batch_size,
        max_attempts: config.consumer_max_attempts,
        backoff_min: config.reconnect_backoff_min,
        backoff_max: config.reconnect_backoff_max,
        shutdown_grace: config.shutdown_grace,
        metrics: metrics.clone(),
    };
    let context = Arc::new(HttpContext {
        node: spec.name.to_owned(),
        pool: pool.clone(),
        tree: tree.clone(),
        metrics: metrics.clone(),
        brokers: vec![publish_rx, consume_rx],
        in_flight: Semaphore::new(config.http_max_in_flight),
        body_timeout: config.http_body_timeout,
        routes,
        faults: faults.map(Arc::new),
    });
    let intake_args = IntakeArgs {
        listener: Arc::new(std::sync::Mutex::new(Some(listener))),
        context,
        limits: ConnectionLimits {
            max_connections: config.http_max_connections,
            header_timeout: config.http_header_timeout,
            max_uri_bytes: config.http_max_uri_bytes,
            max_headers: config.http_max_headers,
            max_header_bytes: config.http_max_header_bytes,
        },
        shutdown_grace: config.shutdown_grace,
    };

    let children = vec![
        ChildSpec::supervisor("store", store),
        ChildSpec::new("amqp-publish", publish_link, move || {
            (AmqpLink, publish_args.clone())
        }),
        ChildSpec::new("amqp-consume", consume_link, move || {
            (AmqpLink, consume_args.clone())
        }),
        ChildSpec::new("outbox-relay", relay, move || {
            (OutboxRelay, relay_args.clone())
        }),
        ChildSpec::new("consumer", consumer, move || {
            (Consumer, consumer_args.clone())
        }),
        ChildSpec::new("http-intake", intake, move || {
            (HttpIntake, intake_args.clone())
        }),
    ];
    let root_args = SupervisorArgs {
        children,
        ..root_args
    };
    let (root, join) = Actor::spawn(None, Supervisor, root_args)
        .await
        .map_err(|e| StartError::Tree(e.to_string()))?;
    tracing::info!(node = spec.name, %addr, "node started");
    Ok(RunningNode {
        name: spec.name,
        addr,
        root,
        join,
        tree,
        pool,
        grace: config.shutdown_grace,
    })
}

impl RunningNode {
    /// The bound HTTP address (the real port when `HTTP_ADDR` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn tree(&self) -> &ActorTree {
        &self.tree
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Graceful shutdown: stops the tree (intake first, store last) within the grace
    /// period, then closes the pool.
    pub async fn shutdown(self) {
        self.root.stop(Some("shutdown requested".into()));
        let grace = self.grace + Duration::from_secs(5);
        if tokio::time::timeout(grace, self.join).await.is_err() {
            tracing::warn!(node = self.name, "shutdown grace period exceeded");
        }
        self.pool.close().await;
        tracing::info!(node = self.name, "node stopped");
    }

    /// Serves until SIGTERM/SIGINT (then shuts down gracefully: `Ok`) or until the root
    /// supervisor gives up (`Err`: the process must exit non-zero).
    pub async fn run_until_signal(mut self) -> Result<(), String> {
        tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!(node = self.name, "shutdown signal received");
                self.shutdown().await;
                Ok(())
            }
            _ = &mut self.join => {
                let escalated = self.tree.get(self.name).is_some_and(|i| i.state == ActorState::Failed);
                self.pool.close().await;
                if escalated {
                    Err(format!("{}: the root supervisor gave up after repeated failures", self.name))
                } else {
                    Err(format!("{}: the actor tree stopped", self.name))
                }
            }
        }
    }
}

/// The whole of a node's `main`: read config (exit 2 with one line naming the variable),
/// start the runtime with the configured worker threads, install telemetry, build (exit 1
/// with one line on failure), serve until a signal (exit 0) or until the root supervisor
/// gives up (exit 1).
pub fn run_main<C, F, Fut>(
    name: &str,
    load: impl FnOnce(&crate::config::Vars) -> Result<C, crate::config::ConfigError>,
    common: impl Fn(&C) -> &CommonConfig,
    build: F,
) -> std::process::ExitCode
where
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = Result<RunningNode, StartError>>,
{
    use std::process::ExitCode;
    let config = match load(&crate::config::Vars::from_env()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime(common(&config).worker_threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        // `<node> healthcheck`: for container health checks in images without curl.
        if std::env::args().nth(1).as_deref() == Some("healthcheck") {
            return healthcheck(common(&config).http_addr).await;
        }
        let telemetry = match crate::telemetry::init(common(&config)) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::from(2);
            }
        };
        let node = match build(config).await {
            Ok(node) => node,
            Err(e) => {
                eprintln!("{name}: cannot start: {e}");
                return ExitCode::from(1);
            }
        };
        let outcome = node.run_until_signal().await;
        // Spans are flushed last, so the shutdown itself is traced.
        telemetry.shutdown().await;
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        }
    })
}

/// A multi-threaded runtime with `worker_threads` workers, set here rather than left to
/// tokio, which would read `TOKIO_WORKER_THREADS` itself and panic on a bad value.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
}

/// Exit 0 when `GET /health/ready` on this node's address answers 200.
async fn healthcheck(addr: SocketAddr) -> std::process::ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(target).await.ok()?;
        let request =
            format!("GET /health/ready HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    match tokio::time::timeout(Duration::from_secs(3), probe).await {
        Ok(Some(true)) => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

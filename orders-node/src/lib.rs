//! orders-node: takes orders over HTTP, publishes `order.*` through its outbox, and moves
//! orders forward on `invoice.*` events.
//!
//! | module | what it holds |
//! |---|---|
//! | [`domain`] | orders, statuses and their rules, request validation (no I/O) |
//! | [`store`] | the SQL: create with idempotency, get, list, cancel, apply invoice events |
//! | [`worker`] | the store worker actor; a pool of them serves HTTP and events concurrently |
//! | [`http`] | the routes of api.md |
//! | [`events`] | `invoice.*` deliveries → store worker messages |
//! | [`config`] | environment variables |
//!
//! The actor tree (shared wiring in `actors::node`):
//! `orders-node` → `store` (worker-0..N) · `amqp-link` · `outbox-relay` · `consumer` · `http-intake`.

pub mod config;
pub mod domain;
pub mod events;
pub mod http;
pub mod store;
pub mod worker;

use std::net::SocketAddr;

use actors::node::{self, Domain, NodeSpec, RunningNode, StartError};
use actors::supervision::{ActorTree, WorkerPool};

pub use config::OrdersConfig;
use worker::{StoreMsg, StoreWorker, WorkerArgs};

pub const NODE_NAME: &str = "orders-node";

/// A running orders-node.
pub struct OrdersNode {
    node: RunningNode,
    workers: WorkerPool<StoreMsg>,
}

impl OrdersNode {
    /// Creates and migrates the database, binds `HTTP_ADDR`, starts the actor tree.
    pub async fn build(config: OrdersConfig) -> Result<Self, StartError> {
        let workers = WorkerPool::<StoreMsg>::new(config.common.database_pool_size as usize);
        let spec = NodeSpec {
            name: NODE_NAME,
            queue: contracts::topology::ORDERS_NODE_QUEUE,
            migrator: sqlx::migrate!("./migrations"),
        };
        let pool_for_domain = workers.clone();
        let node = node::start(spec, &config.common, move |res| {
            let args = WorkerArgs {
                pool: res.pool.clone(),
                notifier: res.notifier.clone(),
                metrics: res.metrics.clone(),
            };
            Domain {
                store_workers: pool_for_domain.child_specs(move || (StoreWorker, args.clone())),
                routes: http::routes(pool_for_domain.clone(), res.request_timeout),
                handler: events::handler(pool_for_domain.clone(), res.request_timeout),
            }
        })
        .await?;
        Ok(Self { node, workers })
    }

    pub fn addr(&self) -> SocketAddr {
        self.node.addr()
    }

    pub fn tree(&self) -> &ActorTree {
        self.node.tree()
    }

    /// Fault injection: makes one store worker panic. Returns `false` if none was running.
    pub fn inject_store_panic(&self) -> bool {
        self.workers
            .pick()
            .is_some_and(|w| w.cast(StoreMsg::Panic).is_ok())
    }

    pub async fn shutdown(self) {
        self.node.shutdown().await
    }

    /// The running node underneath, for `main`.
    pub fn into_running(self) -> RunningNode {
        self.node
    }
}

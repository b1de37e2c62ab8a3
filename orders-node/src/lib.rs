//! orders-node: takes orders over HTTP, publishes `order.*` through its outbox, and moves
//! orders forward on `invoice.*` events.
//!
//! | module | what it holds |
//! |---|---|
//! | [`domain`] | orders, statuses and their rules, request validation (no I/O) |
//! | [`order_body`] | a valid `POST /orders` body read without a JSON tree (the usual case) |
//! | [`store`] | the SQL: create with idempotency, get, list, cancel, apply invoice events |
//! | [`worker`] | what store workers do with the jobs they pull (creates commit together) |
//! | [`http`] | the routes of api.md |
//! | [`events`] | `invoice.*` deliveries → store worker messages |
//! | [`config`] | environment variables |
//!
//! The actor tree (shared wiring in `actors::node`):
//! `orders-node` → `store` (worker-0..N) · `amqp-publish` · `amqp-consume` · `outbox-relay` · `consumer` · `http-intake`.

pub mod config;
pub mod domain;
pub mod events;
pub mod http;
pub mod order_body;
pub mod store;
pub mod worker;

use std::net::SocketAddr;

use std::sync::Arc;

use actors::node::{self, Domain, NodeSpec, RunningNode, StartError};
use actors::supervision::{ActorTree, WorkerPool};
use contracts::topology;

pub use config::OrdersConfig;
use worker::{OrdersStore, StoreMsg};

pub const NODE_NAME: &str = "orders-node";

/// A running orders-node.
pub struct OrdersNode {
    node: RunningNode,
    workers: WorkerPool<StoreMsg>,
}

impl OrdersNode {
    /// Creates and migrates the database, binds `HTTP_ADDR`, starts the actor tree.
    pub async fn build(config: OrdersConfig) -> Result<Self, StartError> {
        let spec = NodeSpec {
            name: NODE_NAME,
            input: topology::ORDERS_NODE_INPUT,
            output: topology::INVOICES_NODE_INPUT,
            migrator: sqlx::migrate!("./migrations"),
        };
        let workers: WorkerPool<StoreMsg> = WorkerPool::new(
            config.common.store_workers,
            node::queue_capacity(&config.common),
        );
        let pool_for_domain = workers.clone();
        let node = node::start(spec, &config.common, move |res| {
            res.metrics.domain_outcomes("order", &worker::OUTCOMES);
            let store = Arc::new(OrdersStore {
                pool: res.pool.clone(),
                connections: res.connections.clone(),
                notifier: res.notifier.clone(),
                metrics: res.metrics.clone(),
            });
            Domain {
                store_workers: pool_for_domain.child_specs(store, res.store.batch_size),
                store_fault: {
                    let workers = pool_for_domain.clone();
                    Arc::new(move || workers.inject_panic())
                },
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
        self.workers.inject_panic()
    }

    pub async fn shutdown(self) {
        self.node.shutdown().await
    }

    /// The running node underneath, for `main`.
    pub fn into_running(self) -> RunningNode {
        self.node
    }
}

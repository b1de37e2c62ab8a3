//! What both nodes share. A node is a supervised tree of these actors plus its domain:
//!
//! | module | what it holds |
//! |---|---|
//! | [`supervision`] | the [`supervision::Supervisor`] actor (restart with backoff, escalation), typed child handles, pull-based worker pools, the live tree |
//! | [`work`] | the [`work::WorkQueue`] pool workers pull batches from (least busy first, group commit) |
//! | [`amqp`] | the [`amqp::AmqpLink`] actor (connection, reconnection, topology) and the [`amqp::Consumer`] bridge (per-order lanes, batches) |
//! | [`relay`] | the [`relay::OutboxRelay`] actor: outbox → broker with publisher confirms |
//! | [`outbox`] | writing events to the outbox and consumed ids to the inbox, inside a transaction |
//! | [`http`] | the [`http::HttpIntake`] actor, requests, problem+json, `/health`, `/metrics`, `/actors` |
//! | [`config`] | environment variables with defaults; one-line errors naming the variable |
//! | [`db`] | create-if-missing, connect, migrate; the connections the hot path keeps between transactions |
//! | [`faults`] | fault injection for drills (`FAULT_INJECTION=on`): make a chosen actor panic |
//! | [`metrics`] | the Prometheus registry of a node |
//! | [`telemetry`] | the tracing subscriber |
//! | [`node`] | running a built node until a signal, with a graceful shutdown |

pub mod amqp;
pub mod backoff;
pub mod config;
pub mod db;
pub mod faults;
pub mod http;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod page_query;
pub mod percent;
pub mod relay;
pub mod supervision;
pub mod telemetry;
pub mod work;

//! Prometheus metrics of a node. Each node owns its own [`prometheus::Registry`] (not the
//! global default), so several nodes can run in one test process without sharing counters.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The metrics both nodes expose; nodes register their domain counters on [`Metrics::registry`].
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `http_requests_total{route,method,status}`
    pub http_requests: IntCounterVec,
    /// `http_request_duration_seconds{route,method}`
    pub http_duration: HistogramVec,
    /// `http_requests_in_flight`
    pub http_in_flight: IntGauge,
    /// `outbox_pending_events`
    pub outbox_pending: IntGauge,
    /// `outbox_parked_events_total`: events the broker refused, set aside in the outbox.
    pub outbox_parked: prometheus::IntCounter,
    /// `outbox_oldest_pending_age_seconds`
    pub outbox_oldest_age: prometheus::Gauge,
    /// `outbox_publish_batch_seconds`
    pub outbox_batch: Histogram,
    /// `messages_published_total{exchange,routing_key}`
    pub published: IntCounterVec,
    /// `messages_consumed_total{queue,type,outcome}`: outcome is processed, duplicate,
    /// retried or dead_lettered.
    pub consumed: IntCounterVec,
    /// `message_handling_seconds{queue,type}`
    pub consume_duration: HistogramVec,
    /// `actor_restarts_total{actor}`
    pub actor_restarts: IntCounterVec,
    /// `amqp_connection_up{link}` (1 connected, 0 not), link `publish` or `consume`
    pub amqp_up: IntGaugeVec,
    /// `amqp_connects_total{link,outcome}`: link `publish` or `consume`; outcome ok or error.
    pub amqp_connects: IntCounterVec,
    /// `domain_events_total{entity,outcome}`: orders created/canceled/invoiced/paid,
    /// invoices issued/paid/voided, idempotent replays.
    pub domain: IntCounterVec,
    /// `db_pool_connections{state}`
    pub db_pool: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    pub fn new(node: &str) -> Self {
        let registry =
            Registry::new_custom(None, Some([("node".to_owned(), node.to_owned())].into()))
                .expect("valid registry labels");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let http_in_flight = gauge("http_requests_in_flight", "HTTP requests being served");
        let outbox_pending = gauge(
            "outbox_pending_events",
            "Outbox rows not yet confirmed by the broker",
        );
        let amqp_up = IntGaugeVec::new(
            Opts::new("amqp_connection_up", "1 while the AMQP connection is open"),
            &["link"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(amqp_up.clone()))
            .expect("metric registered once");
        let outbox_parked = prometheus::IntCounter::new(
            "outbox_parked_events_total",
            "Events the broker refused, set aside in the outbox (parked_at)",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(outbox_parked.clone()))
            .expect("metric registered once");
        let outbox_oldest_age = prometheus::Gauge::new(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished outbox row",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(outbox_oldest_age.clone()))
            .expect("metric registered once");
        let outbox_batch = Histogram::with_opts(HistogramOpts::new(
            "outbox_publish_batch_seconds",
            "Time to publish and confirm one outbox batch",
        ))
        .expect("valid metric definition");
        registry
            .register(Box::new(outbox_batch.clone()))
            .expect("metric registered once");
        let db_pool = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Database pool connections"),
            &["state"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(db_pool.clone()))
            .expect("metric registered once");
        Self {
            http_requests: counter(
                &registry,
                "http_requests_total",
                "HTTP requests served",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                &registry,
                "http_request_duration_seconds",
                "HTTP request latency",
                &["route", "method"],
            ),
            http_in_flight,
            outbox_pending,
            outbox_parked,
            outbox_oldest_age,
            outbox_batch,
            published: counter(
                &registry,
                "messages_published_total",
                "Messages confirmed by the broker",
                &["exchange", "routing_key"],
            ),
            consumed: counter(
                &registry,
                "messages_consumed_total",
                "Messages consumed, by outcome",
                &["queue", "type", "outcome"],
            ),
            consume_duration: histogram(
                &registry,
                "message_handling_seconds",
                "Time to handle one consumed message",
                &["queue", "type"],
            ),
            actor_restarts: counter(
                &registry,
                "actor_restarts_total",
                "Actor failures followed by a restart attempt",
                &["actor"],
            ),
            amqp_up,
            amqp_connects: counter(
                &registry,
                "amqp_connects_total",
                "AMQP connection attempts",
                &["link", "outcome"],
            ),
            domain: counter(
                &registry,
                "domain_events_total",
                "Orders and invoices by outcome",
                &["entity", "outcome"],
            ),
            db_pool,
            registry,
        }
    }

    /// Creates, at 0, every series whose labels are known at start (the node's published
    /// event types, connection outcomes, pool states), so that a dashboard or an alert can
    /// tell "none yet" from "no such metric". Consumers and supervisors add their own.
    pub fn start_at_zero(&self, exchange: &str, routing_keys: &[&str]) {
        for key in routing_keys {
            let _ = self.published.with_label_values(&[exchange, key]);
        }
        for link in ["publish", "consume"] {
            let _ = self.amqp_up.with_label_values(&[link]);
            for outcome in ["ok", "error"] {
                let _ = self.amqp_connects.with_label_values(&[link, outcome]);
            }
        }
        for state in ["idle", "in_use"] {
            let _ = self.db_pool.with_label_values(&[state]);
        }
    }

    /// Creates `domain_events_total{entity, outcome}` at 0 for each outcome.
    pub fn domain_outcomes(&self, entity: &str, outcomes: &[&str]) {
        for outcome in outcomes {
            let _ = self.domain.with_label_values(&[entity, outcome]);
        }
    }

    /// The Prometheus text exposition of every metric of this node.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

//! Configuration from environment variables with fixed names and working defaults.
//!
//! A node's config is read from a [`Vars`] source (the process environment in `main`, a map
//! in tests), so tests never mutate the environment. Every bad value is a [`ConfigError`]
//! whose one-line message names the variable and the problem.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::supervision::RestartPolicy;

/// A bad configuration value: stops the node at start-up.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}={shown:?}: {problem}")]
pub struct ConfigError {
    pub var: String,
    shown: String,
    problem: String,
}

/// Where variables come from. It remembers which names were read, so tests can prove that
/// every variable a deployment sets is one the node actually reads.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    values: HashMap<String, String>,
    read: Arc<Mutex<BTreeSet<String>>>,
}

impl Vars {
    pub fn from_env() -> Self {
        Self::from_pairs(std::env::vars())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            read: Arc::default(),
        }
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.values.insert(key.into(), value.into());
    }

    /// Every variable, e.g. to hand to a child process.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The names a config has looked up so far (set or not).
    pub fn read_names(&self) -> BTreeSet<String> {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn raw(&self, var: &str) -> Option<&str> {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(var.to_owned());
        self.values
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    fn error(&self, var: &str, problem: impl fmt::Display, secret: bool) -> ConfigError {
        let shown = match (secret, self.raw(var)) {
            (true, Some(v)) => redact_url(v),
            (_, v) => v.unwrap_or_default().to_owned(),
        };
        ConfigError {
            var: var.to_owned(),
            shown,
            problem: problem.to_string(),
        }
    }

    /// A value parsed with `FromStr`, or `default` when unset.
    pub fn parse<T: FromStr>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e| self.error(var, e, false)),
        }
    }

    /// A number within `range`.
    pub fn number<T>(
        &self,
        var: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let value = self.parse(var, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(self.error(
                var,
                format!("must be between {} and {}", range.start(), range.end()),
                false,
            ))
        }
    }

    /// A humantime duration such as `30d` or `250ms`.
    pub fn duration(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => humantime::parse_duration(v.trim()).map_err(|e| self.error(var, e, false)),
        }
    }

    pub fn socket_addr(&self, var: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.raw(var).unwrap_or(default);
        raw.trim().parse().map_err(|e| ConfigError {
            var: var.to_owned(),
            shown: raw.to_owned(),
            problem: format!("{e} (expected host:port, e.g. 127.0.0.1:3333)"),
        })
    }

    /// A URL with one of `schemes`; its password never appears in an error or log.
    pub fn url(
        &self,
        var: &str,
        default: &str,
        schemes: &[&str],
    ) -> Result<SecretUrl, ConfigError> {
        let raw = self.raw(var).unwrap_or(default).trim().to_owned();
        let scheme = raw.split_once("://").map(|(s, _)| s);
        match scheme {
            Some(s) if schemes.contains(&s) => Ok(SecretUrl(raw)),
            _ => Err(self.error(
                var,
                format!("must be a URL starting with {}://", schemes.join("://, ")),
                true,
            )),
        }
    }

    pub fn string(&self, var: &str, default: &str) -> String {
        self.raw(var).unwrap_or(default).trim().to_owned()
    }

    pub fn optional_string(&self, var: &str) -> Option<String> {
        self.raw(var).map(|v| v.trim().to_owned())
    }
}

/// A connection URL that may carry a password: `Debug`/`Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    /// The full URL, for handing to a driver. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// `scheme://user:secret@host/..` → `scheme://user:***@host/..`
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    match path {
        Some(p) => format!("{scheme}://{authority}/{p}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`: the standard values this node can export with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl FromStr for OtlpProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            other => Err(format!(
                "{other:?} is not supported (use grpc or http/protobuf)"
            )),
        }
    }
}

/// What both nodes configure the same way. Each node adds its own domain settings.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `HTTP_ADDR`
    pub http_addr: SocketAddr,
    /// `DATABASE_URL`
    pub database_url: SecretUrl,
    /// `DATABASE_POOL_SIZE` (default 16): connections, and store workers.
    pub database_pool_size: u32,
    /// `AMQP_URL`
    pub amqp_url: SecretUrl,
    /// `AMQP_PREFETCH` (default 256): unacknowledged deliveries per consumer.
    pub amqp_prefetch: u16,
    /// `CONSUMER_LANES` (default 4): deliveries handled concurrently, one order per lane.
    pub consumer_lanes: usize,
    /// `CONSUMER_BATCH_SIZE` (default 64): the most deliveries applied in one transaction.
    pub consumer_batch_size: usize,
    /// `STORE_WORKERS` (default 8): store worker actors pulling from one queue.
    pub store_workers: usize,
    /// `STORE_BATCH_SIZE` (default 64): the most jobs a store worker takes at once; the
    /// creates among them commit in one transaction.
    pub store_batch_size: usize,
    /// `AMQP_HEARTBEAT` (default 10s): how soon a dead connection is noticed.
    pub amqp_heartbeat: Duration,
    /// `RECONNECT_BACKOFF_MIN` / `RECONNECT_BACKOFF_MAX` (100ms / 10s)
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// `HTTP_MAX_IN_FLIGHT` (default 512): beyond this, intake answers 503.
    pub http_max_in_flight: usize,
    /// `REQUEST_TIMEOUT` (default 10s): an actor call that takes longer answers 503.
    pub request_timeout: Duration,
    /// `OUTBOX_POLL_INTERVAL` (default 1s) and `OUTBOX_BATCH_SIZE` (default 256).
    pub outbox_poll_interval: Duration,
    pub outbox_batch_size: i64,
    /// `OUTBOX_RETENTION` (default 7d): published rows are deleted after this.
    pub outbox_retention: Duration,
    /// `CONSUMER_MAX_ATTEMPTS` (default 5): a handler error (other than an outage) this many
    /// times dead-letters the message.
    pub consumer_max_attempts: u32,
    /// `RESTART_MAX` / `RESTART_WINDOW` (5 / 30s): restart intensity before escalating.
    pub restart_policy: RestartPolicy,
    /// `SHUTDOWN_GRACE` (default 10s)
    pub shutdown_grace: Duration,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (unset: no export)
    pub otel_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or `http/protobuf`, the default)
    pub otel_protocol: OtlpProtocol,
    /// `OTEL_SERVICE_NAME`
    pub service_name: String,
    /// `RUST_LOG` (default info) and `LOG_FORMAT` (`text` or `json`, default text)
    pub log_filter: String,
    pub log_json: bool,
}

impl CommonConfig {
    pub fn from_vars(
        vars: &Vars,
        service: &str,
        default_addr: &str,
        default_db: &str,
    ) -> Result<Self, ConfigError> {
        let backoff_min = vars.duration("RECONNECT_BACKOFF_MIN", Duration::from_millis(100))?;
        let backoff_max = vars.duration("RECONNECT_BACKOFF_MAX", Duration::from_secs(10))?;
        if backoff_max < backoff_min {
            return Err(vars.error(
                "RECONNECT_BACKOFF_MAX",
                "must not be below RECONNECT_BACKOFF_MIN",
                false,
            ));
        }
        let log_format = vars.string("LOG_FORMAT", "text");
        if log_format != "text" && log_format != "json" {
            return Err(vars.error("LOG_FORMAT", "must be text or json", false));
        }
        Ok(Self {
            http_addr: vars.socket_addr("HTTP_ADDR", default_addr)?,
            database_url: vars.url("DATABASE_URL", default_db, &["postgres", "postgresql"])?,
            database_pool_size: vars.number("DATABASE_POOL_SIZE", 16, 1..=1000)?,
            amqp_url: vars.url(
                "AMQP_URL",
                "amqp://guest:guest@localhost:5672/%2f",
                &["amqp", "amqps"],
            )?,
            amqp_prefetch: vars.number("AMQP_PREFETCH", 256, 1..=10_000)?,
            consumer_lanes: vars.number("CONSUMER_LANES", 4, 1..=256)?,
            consumer_batch_size: vars.number("CONSUMER_BATCH_SIZE", 64, 1..=10_000)?,
            store_workers: vars.number("STORE_WORKERS", 8, 1..=1000)?,
            store_batch_size: vars.number("STORE_BATCH_SIZE", 64, 1..=10_000)?,
            amqp_heartbeat: vars.duration("AMQP_HEARTBEAT", Duration::from_secs(10))?,
            reconnect_backoff_min: backoff_min,
            reconnect_backoff_max: backoff_max,
            http_max_in_flight: vars.number("HTTP_MAX_IN_FLIGHT", 512, 1..=1_000_000)?,
            request_timeout: vars.duration("REQUEST_TIMEOUT", Duration::from_secs(10))?,
            outbox_poll_interval: vars.duration("OUTBOX_POLL_INTERVAL", Duration::from_secs(1))?,
            outbox_batch_size: vars.number("OUTBOX_BATCH_SIZE", 256, 1..=10_000)?,
            outbox_retention: vars
                .duration("OUTBOX_RETENTION", Duration::from_secs(7 * 24 * 3600))?,
            consumer_max_attempts: vars.number("CONSUMER_MAX_ATTEMPTS", 5, 1..=1000)?,
            restart_policy: RestartPolicy {
                max_restarts: vars.number("RESTART_MAX", 5, 1..=1000)?,
                window: vars.duration("RESTART_WINDOW", Duration::from_secs(30))?,
                backoff_min,
                backoff_max,
            },
            shutdown_grace: vars.duration("SHUTDOWN_GRACE", Duration::from_secs(10))?,
            otel_endpoint: vars.optional_string("OTEL_EXPORTER_OTLP_ENDPOINT"),
            otel_protocol: vars.parse("OTEL_EXPORTER_OTLP_PROTOCOL", OtlpProtocol::HttpProtobuf)?,
            service_name: vars.string("OTEL_SERVICE_NAME", service),
            log_filter: vars.string("RUST_LOG", "info"),
            log_json: log_format == "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(pairs: &[(&str, &str)]) -> Result<CommonConfig, ConfigError> {
        CommonConfig::from_vars(
            &Vars::from_pairs(pairs.iter().copied()),
            "svc",
            "127.0.0.1:1",
            "postgres://localhost/x",
        )
    }

    #[test]
    fn defaults_work_with_nothing_set() {
        let c = common(&[]).expect("defaults are valid");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:1");
        assert_eq!(c.service_name, "svc");
        assert_eq!(c.otel_endpoint, None);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn each_bad_value_names_its_variable_in_one_line() {
        for (var, value) in [
            ("HTTP_ADDR", "nowhere"),
            ("DATABASE_URL", "mysql://root@localhost/x"),
            ("AMQP_PREFETCH", "0"),
            ("SHUTDOWN_GRACE", "soon"),
            ("LOG_FORMAT", "xml"),
            ("DATABASE_POOL_SIZE", "many"),
        ] {
            let err = common(&[(var, value)]).expect_err(var).to_string();
            assert!(err.contains(var), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn durations_are_humantime() {
        let c = common(&[("SHUTDOWN_GRACE", "250ms"), ("OUTBOX_RETENTION", "30d")]).expect("valid");
        assert_eq!(c.shutdown_grace, Duration::from_millis(250));
        assert_eq!(c.outbox_retention, Duration::from_secs(30 * 86400));
    }

    #[test]
    fn secrets_are_redacted() {
        let err = common(&[("AMQP_URL", "http://user:hunter2@host/")])
            .expect_err("bad scheme")
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let url = SecretUrl::new("postgres://app:hunter2@db:5432/orders");
        assert_eq!(format!("{url:?}"), "postgres://app:***@db:5432/orders");
    }
}

//! Configuration from environment variables with fixed names and working defaults, read
//! through `envy` into typed structs.
//!
//! A node's config is read from a [`Vars`] source (the process environment in `main`, a map
//! in tests), so tests never mutate the environment. envy hands each struct field its value
//! alone, without the variable's name; so that every error can name its variable, each
//! value reaches envy tagged as `NAME=value` and every field is a [`Setting`], which parses
//! the value and, on failure, fails with one line naming the variable and the problem.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};

use crate::supervision::RestartPolicy;

/// A bad configuration value: stops the node at start-up.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {message}")]
pub struct ConfigError {
    /// The variable at fault.
    pub var: String,
    /// `NAME="shown value": problem`, one line, secrets redacted.
    message: String,
}

impl ConfigError {
    fn new(var: &str, raw: &str, problem: impl fmt::Display) -> Self {
        let shown = redact_url(raw.trim());
        let problem = problem.to_string().replace('\n', " ");
        Self {
            var: var.to_owned(),
            message: format!("{var}={shown:?}: {problem}"),
        }
    }

    /// An error about a value that may hold credentials (OTLP headers): it names the
    /// variable and the problem but never shows the value.
    fn hidden(var: &str, problem: impl fmt::Display) -> Self {
        let problem = problem.to_string().replace('\n', " ");
        Self {
            var: var.to_owned(),
            message: format!("{var}=(value not shown): {problem}"),
        }
    }

    fn from_envy(e: envy::Error) -> Self {
        let message = e.to_string().replace('\n', " ");
        Self {
            var: message.split('=').next().unwrap_or_default().to_owned(),
            message,
        }
    }
}

/// Where variables come from.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    values: BTreeMap<String, String>,
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
        }
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.values.insert(key.into(), value.into());
    }

    /// Every variable, e.g. to hand to a child process.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Reads `T` through envy: each field of `T` (a [`Setting`], named like its variable in
    /// lower case) gets its variable's value; variables `T` does not name are ignored.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let tagged = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), format!("{k}={v}")));
        envy::from_iter(tagged).map_err(ConfigError::from_envy)
    }
}

/// The variables a config struct `T` reads (its field names, upper-cased), e.g. to prove
/// that every variable a deployment sets is one the node reads.
pub fn variables_of<T: DeserializeOwned>() -> Vec<String> {
    /// A deserializer that only records the field names a derived struct asks for.
    struct FieldNames<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field names recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields.iter().map(|f| f.to_ascii_uppercase()).collect()
}

/// One variable as envy read it: unset (or blank), or a value parsed as `T`. A value that
/// does not parse fails the whole read with one line naming the variable.
#[derive(Debug, Clone)]
pub struct Setting<T> {
    var: String,
    raw: String,
    value: Option<T>,
}

impl<T> Default for Setting<T> {
    fn default() -> Self {
        Self {
            var: String::new(),
            raw: String::new(),
            value: None,
        }
    }
}

impl<'de, T> Deserialize<'de> for Setting<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let tagged = String::deserialize(deserializer)?;
        let (var, raw) = tagged.split_once('=').unwrap_or(("", tagged.as_str()));
        let value = match raw.trim() {
            "" => None,
            text => Some(
                text.parse::<T>()
                    .map_err(|e| de::Error::custom(ConfigError::new(var, raw, e).message))?,
            ),
        };
        Ok(Self {
            var: var.to_owned(),
            raw: raw.to_owned(),
            value,
        })
    }
}

impl<T> Setting<T> {
    /// The value, or `default` when unset.
    pub fn or(self, default: T) -> T {
        self.value.unwrap_or(default)
    }

    pub fn optional(self) -> Option<T> {
        self.value
    }

    /// The value (or `default`), which must lie within `range`.
    pub fn within(self, default: T, range: std::ops::RangeInclusive<T>) -> Result<T, ConfigError>
    where
        T: PartialOrd + fmt::Display,
    {
        let (var, raw) = (self.var.clone(), self.raw.clone());
        let value = self.or(default);
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::new(
                &var,
                &raw,
                format!("must be between {} and {}", range.start(), range.end()),
            ))
        }
    }

    /// An error about this variable's value.
    pub fn invalid(&self, problem: impl fmt::Display) -> ConfigError {
        ConfigError::new(&self.var, &self.raw, problem)
    }
}

/// A humantime duration such as `30d` or `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Human(pub Duration);

impl FromStr for Human {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Human)
    }
}

impl Setting<Human> {
    /// The duration, or `default` when unset.
    pub fn duration(self, default: Duration) -> Duration {
        self.or(Human(default)).0
    }
}

impl Setting<SecretUrl> {
    /// The URL (or `default`), which must start with one of `schemes`.
    pub fn url(self, default: &str, schemes: &[&str]) -> Result<SecretUrl, ConfigError> {
        let (var, raw) = (self.var.clone(), self.raw.clone());
        let url = self.or(SecretUrl::new(default));
        match url.0.split_once("://") {
            Some((scheme, _)) if schemes.contains(&scheme) => Ok(url),
            _ => Err(ConfigError::new(
                &var,
                &raw,
                format!("must be a URL starting with {}://", schemes.join("://, ")),
            )),
        }
    }
}

/// A connection URL that may carry a password: `Debug`/`Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

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

/// Hides every credential a connection URL can carry: the password in the userinfo
/// (`scheme://user:***@host/..`) and any query parameter that holds a secret
/// (`?password=***`, `sslpassword=***`, … — sqlx and lapin accept several).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (rest, query) = rest
        .split_once('?')
        .map_or((rest, None), |(r, q)| (r, Some(q)));
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
    let mut out = format!("{scheme}://{authority}");
    if let Some(p) = path {
        out.push('/');
        out.push_str(p);
    }
    if let Some(q) = query {
        let redacted: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret_param(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&redacted.join("&"));
    }
    out
}

fn is_secret_param(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key", "auth"]
        .iter()
        .any(|word| key.contains(word))
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
    /// `STORE_WORKERS` (default 2): store worker actors pulling from one queue. Few, so that
    /// what waits while one commits becomes the next big batch: on two cores 2 workers cost
    /// PostgreSQL ~40% less CPU per order than 8, whose batches were small.
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
    /// `HTTP_MAX_CONNECTIONS` (default 1024): connections served at once; more wait.
    pub http_max_connections: usize,
    /// `HTTP_HEADER_TIMEOUT` (default 10s): to send a request's head, and idle keep-alive.
    pub http_header_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT` (default 10s): to send a request's body.
    pub http_body_timeout: Duration,
    /// `HTTP_MAX_URI_BYTES` (8192), `HTTP_MAX_HEADERS` (100), `HTTP_MAX_HEADER_BYTES`
    /// (16384): past them, 414 / 431.
    pub http_max_uri_bytes: usize,
    pub http_max_headers: usize,
    pub http_max_header_bytes: usize,
    /// `REQUEST_TIMEOUT` (default 10s): an actor call that takes longer answers 503.
    pub request_timeout: Duration,
    /// `OUTBOX_POLL_INTERVAL` (default 1s) and `OUTBOX_BATCH_SIZE` (default 256).
    pub outbox_poll_interval: Duration,
    pub outbox_batch_size: i64,
    /// `OUTBOX_CONCURRENCY` (default 4): relay passes in flight at once.
    pub outbox_concurrency: usize,
    /// `OUTBOX_RETENTION` (default 0s): how long published rows are kept for inspection.
    /// 0 deletes a row as soon as the broker confirmed it, which keeps the outbox small.
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
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, checked with the exporter's other variables.
    pub otlp_export: OtlpExport,
    /// `OTEL_BSP_*`: how the span batch processor queues and exports.
    pub span_batch: SpanBatch,
    /// `RUST_LOG` (default info) and `LOG_FORMAT` (`text` or `json`, default text)
    pub log_filter: String,
    pub log_json: bool,
    /// `FAULT_INJECTION` (default off): `on` adds `POST /faults/panic/{actor}`, which makes
    /// one of the node's actors panic — for resilience drills, never in production.
    pub fault_injection: bool,
    /// `TOKIO_WORKER_THREADS` (default: the CPUs available): the runtime's worker threads.
    /// Read here rather than by tokio, which panics on a bad value instead of naming it.
    pub worker_threads: usize,
}

/// The variables both nodes read, as envy fills them in.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CommonEnv {
    http_addr: Setting<SocketAddr>,
    database_url: Setting<SecretUrl>,
    database_pool_size: Setting<u32>,
    amqp_url: Setting<SecretUrl>,
    amqp_prefetch: Setting<u16>,
    amqp_heartbeat: Setting<Human>,
    consumer_lanes: Setting<usize>,
    consumer_batch_size: Setting<usize>,
    store_workers: Setting<usize>,
    store_batch_size: Setting<usize>,
    reconnect_backoff_min: Setting<Human>,
    reconnect_backoff_max: Setting<Human>,
    http_max_in_flight: Setting<usize>,
    http_max_connections: Setting<usize>,
    http_header_timeout: Setting<Human>,
    http_body_timeout: Setting<Human>,
    http_max_uri_bytes: Setting<usize>,
    http_max_headers: Setting<usize>,
    http_max_header_bytes: Setting<usize>,
    request_timeout: Setting<Human>,
    outbox_poll_interval: Setting<Human>,
    outbox_batch_size: Setting<i64>,
    outbox_concurrency: Setting<usize>,
    outbox_retention: Setting<Human>,
    consumer_max_attempts: Setting<u32>,
    restart_max: Setting<usize>,
    restart_window: Setting<Human>,
    shutdown_grace: Setting<Human>,
    otel_exporter_otlp_endpoint: Setting<String>,
    otel_exporter_otlp_protocol: Setting<OtlpProtocol>,
    otel_exporter_otlp_timeout: Setting<u64>,
    otel_exporter_otlp_headers: Setting<String>,
    otel_exporter_otlp_compression: Setting<String>,
    otel_exporter_otlp_insecure: Setting<String>,
    otel_exporter_otlp_traces_endpoint: Setting<String>,
    otel_exporter_otlp_traces_protocol: Setting<String>,
    otel_exporter_otlp_traces_timeout: Setting<String>,
    otel_exporter_otlp_traces_headers: Setting<String>,
    otel_exporter_otlp_traces_compression: Setting<String>,
    otel_exporter_otlp_traces_insecure: Setting<String>,
    otel_service_name: Setting<String>,
    otel_bsp_max_queue_size: Setting<usize>,
    otel_bsp_max_export_batch_size: Setting<usize>,
    otel_bsp_schedule_delay: Setting<u64>,
    rust_log: Setting<String>,
    log_format: Setting<LogFormat>,
    fault_injection: Setting<Switch>,
    tokio_worker_threads: Setting<usize>,
}

/// An on/off variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

impl FromStr for Switch {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Switch::On),
            "off" => Ok(Switch::Off),
            _ => Err("must be on or off"),
        }
    }
}

/// `LOG_FORMAT`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("must be text or json"),
        }
    }
}

/// The standard `OTEL_BSP_*` variables that the span batch processor honours, read and
/// checked here: the SDK reads them itself but silently ignores a value it cannot parse,
/// and a queue of 0 would drop every span. The defaults are the SDK's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanBatch {
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (2048): spans waiting for export; past it, new ones are dropped.
    pub max_queue_size: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512): spans per export, at most the queue size.
    pub max_export_batch_size: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY` (5000, in milliseconds as the standard says): the longest
    /// a finished span waits before it is exported.
    pub scheduled_delay: Duration,
}

impl SpanBatch {
    fn from_settings(
        queue: Setting<usize>,
        batch: Setting<usize>,
        delay: Setting<u64>,
    ) -> Result<Self, ConfigError> {
        use opentelemetry_sdk::trace::{
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT, OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT,
            OTEL_BSP_SCHEDULE_DELAY_DEFAULT,
        };
        let max_queue_size = queue.within(OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT, 1..=10_000_000)?;
        let batch_setting = batch.clone();
        let max_export_batch_size = batch.within(
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT.min(max_queue_size),
            1..=10_000_000,
        )?;
        if max_export_batch_size > max_queue_size {
            return Err(batch_setting.invalid("must not be above OTEL_BSP_MAX_QUEUE_SIZE"));
        }
        let default_delay_ms =
            u64::try_from(OTEL_BSP_SCHEDULE_DELAY_DEFAULT.as_millis()).unwrap_or(5000);
        Ok(Self {
            max_queue_size,
            max_export_batch_size,
            scheduled_delay: Duration::from_millis(delay.within(default_delay_ms, 1..=86_400_000)?),
        })
    }
}

/// The OTLP exporter's own standard variables, checked here. The exporter reads them from
/// the process environment itself and ignores what it cannot use without a word: a timeout
/// written `10s` (the standard's unit is milliseconds) or `0`, a header that is not
/// `key=value`, a compression this build lacks. The signal-specific `OTEL_EXPORTER_OTLP_TRACES_*`
/// variants are refused: this node exports traces only, and reads the general ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtlpExport {
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (10000, in milliseconds as the standard says): the
    /// longest one export may take. Given to the exporter explicitly.
    pub timeout: Duration,
}

/// The general variables that the `OTEL_EXPORTER_OTLP_TRACES_*` ones would override.
const OTLP_TRACES_VARIANTS: [&str; 6] = [
    "ENDPOINT",
    "PROTOCOL",
    "TIMEOUT",
    "HEADERS",
    "COMPRESSION",
    "INSECURE",
];

impl OtlpExport {
    fn from_env(env: &CommonEnv) -> Result<Self, ConfigError> {
        let traces = [
            &env.otel_exporter_otlp_traces_endpoint,
            &env.otel_exporter_otlp_traces_protocol,
            &env.otel_exporter_otlp_traces_timeout,
            &env.otel_exporter_otlp_traces_headers,
            &env.otel_exporter_otlp_traces_compression,
            &env.otel_exporter_otlp_traces_insecure,
        ];
        for (setting, general) in traces.into_iter().zip(OTLP_TRACES_VARIANTS) {
            if setting.value.is_some() {
                return Err(ConfigError::hidden(
                    &setting.var,
                    format_args!(
                        "not read by this node: set OTEL_EXPORTER_OTLP_{general}, which it applies to traces, the only signal it exports"
                    ),
                ));
            }
        }
        if let Some(raw) = &env.otel_exporter_otlp_headers.value {
            check_otlp_headers(raw)
                .map_err(|problem| ConfigError::hidden("OTEL_EXPORTER_OTLP_HEADERS", problem))?;
        }
        let compression = &env.otel_exporter_otlp_compression;
        if compression
            .value
            .as_deref()
            .is_some_and(|c| !c.trim().eq_ignore_ascii_case("none"))
        {
            return Err(compression
                .invalid("this build does not compress exports: set none or leave it unset"));
        }
        let insecure = &env.otel_exporter_otlp_insecure;
        if insecure.value.as_deref().is_some_and(|v| {
            !v.trim().eq_ignore_ascii_case("true") && !v.trim().eq_ignore_ascii_case("false")
        }) {
            return Err(insecure.invalid("must be true or false"));
        }
        let default_ms =
            u64::try_from(opentelemetry_otlp::OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT.as_millis())
                .unwrap_or(10_000);
        let timeout_ms = env
            .otel_exporter_otlp_timeout
            .clone()
            .within(default_ms, 1..=3_600_000)?;
        Ok(Self {
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS` as the standard writes it: `key=value` pairs separated by
/// commas, each value percent-encoded. The same reading as the exporter's, which skips an
/// entry it cannot use; here such an entry is an error. The problem names the entry's
/// position and key, never its value (often a credential).
fn check_otlp_headers(raw: &str) -> Result<(), String> {
    use crate::percent::Plus;
    use hyper::header::{HeaderName, HeaderValue};
    for (n, entry) in raw.split(',').map(str::trim).enumerate() {
        let position = n + 1;
        if entry.is_empty() {
            continue; // `a=b,` or `a=b, `: nothing to send
        }
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!("entry {position} is not key=value"));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            return Err(format!("entry {position} has an empty key or value"));
        }
        if HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(format!("entry {position}: {key:?} is not a header name"));
        }
        // Undecodable, the exporter sends the value as written.
        let decoded =
            crate::percent::decode(value, Plus::Literal).unwrap_or_else(|_| value.to_owned());
        if HeaderValue::from_str(&decoded).is_err() {
            return Err(format!(
                "entry {position} ({key}): the value is not a valid header value"
            ));
        }
    }
    Ok(())
}

/// tokio's own default: one worker per CPU this process may use.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl CommonConfig {
    /// The variables every node reads.
    pub fn variables() -> Vec<String> {
        variables_of::<CommonEnv>()
    }

    pub fn from_vars(
        vars: &Vars,
        service: &str,
        default_addr: &str,
        default_db: &str,
    ) -> Result<Self, ConfigError> {
        let env: CommonEnv = vars.read()?;
        let otlp_export = OtlpExport::from_env(&env)?;
        let span_batch = SpanBatch::from_settings(
            env.otel_bsp_max_queue_size,
            env.otel_bsp_max_export_batch_size,
            env.otel_bsp_schedule_delay,
        )?;
        let backoff_max_setting = env.reconnect_backoff_max.clone();
        let backoff_min = env
            .reconnect_backoff_min
            .duration(Duration::from_millis(100));
        let backoff_max = env.reconnect_backoff_max.duration(Duration::from_secs(10));
        if backoff_max < backoff_min {
            return Err(backoff_max_setting.invalid("must not be below RECONNECT_BACKOFF_MIN"));
        }
        let http_addr = match env.http_addr.optional() {
            Some(addr) => addr,
            None => default_addr
                .parse()
                .map_err(|e| ConfigError::new("HTTP_ADDR", default_addr, e))?,
        };
        Ok(Self {
            http_addr,
            database_url: env
                .database_url
                .url(default_db, &["postgres", "postgresql"])?,
            database_pool_size: env.database_pool_size.within(16, 1..=1000)?,
            amqp_url: env
                .amqp_url
                .url("amqp://guest:guest@localhost:5672/%2f", &["amqp", "amqps"])?,
            amqp_prefetch: env.amqp_prefetch.within(256, 1..=10_000)?,
            consumer_lanes: env.consumer_lanes.within(4, 1..=256)?,
            consumer_batch_size: env.consumer_batch_size.within(64, 1..=10_000)?,
            store_workers: env.store_workers.within(2, 1..=1000)?,
            store_batch_size: env.store_batch_size.within(64, 1..=10_000)?,
            amqp_heartbeat: env.amqp_heartbeat.duration(Duration::from_secs(10)),
            reconnect_backoff_min: backoff_min,
            reconnect_backoff_max: backoff_max,
            http_max_in_flight: env.http_max_in_flight.within(512, 1..=1_000_000)?,
            http_max_connections: env.http_max_connections.within(1024, 1..=1_000_000)?,
            http_header_timeout: env.http_header_timeout.duration(Duration::from_secs(10)),
            http_body_timeout: env.http_body_timeout.duration(Duration::from_secs(10)),
            http_max_uri_bytes: env.http_max_uri_bytes.within(8192, 256..=1024 * 1024)?,
            http_max_headers: env.http_max_headers.within(100, 10..=10_000)?,
            http_max_header_bytes: env
                .http_max_header_bytes
                .within(16 * 1024, 1024..=1024 * 1024)?,
            request_timeout: env.request_timeout.duration(Duration::from_secs(10)),
            outbox_poll_interval: env.outbox_poll_interval.duration(Duration::from_secs(1)),
            outbox_batch_size: env.outbox_batch_size.within(256, 1..=10_000)?,
            outbox_concurrency: env.outbox_concurrency.within(4, 1..=64)?,
            outbox_retention: env.outbox_retention.duration(Duration::ZERO),
            consumer_max_attempts: env.consumer_max_attempts.within(5, 1..=1000)?,
            restart_policy: RestartPolicy {
                max_restarts: env.restart_max.within(5, 1..=1000)?,
                window: env.restart_window.duration(Duration::from_secs(30)),
                backoff_min,
                backoff_max,
            },
            shutdown_grace: env.shutdown_grace.duration(Duration::from_secs(10)),
            otel_endpoint: env.otel_exporter_otlp_endpoint.optional(),
            otel_protocol: env
                .otel_exporter_otlp_protocol
                .or(OtlpProtocol::HttpProtobuf),
            service_name: env.otel_service_name.or(service.to_owned()),
            otlp_export,
            span_batch,
            log_filter: env.rust_log.or("info".to_owned()),
            log_json: env.log_format.or(LogFormat::Text) == LogFormat::Json,
            fault_injection: env.fault_injection.or(Switch::Off) == Switch::On,
            worker_threads: env
                .tokio_worker_threads
                .within(default_worker_threads(), 1..=1024)?,
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
    fn envy_errors_name_the_variable_for_numbers_durations_addresses_and_urls() {
        for (var, value, problem) in [
            ("STORE_WORKERS", "0", "must be between 1 and 1000"),
            ("AMQP_PREFETCH", "lots", "invalid digit"),
            ("TOKIO_WORKER_THREADS", "0", "must be between 1 and 1024"),
            ("TOKIO_WORKER_THREADS", "two", "invalid digit"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "must be between 1 and"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "big", "invalid digit"),
            ("OTEL_BSP_SCHEDULE_DELAY", "5s", "invalid digit"),
            ("REQUEST_TIMEOUT", "10 parsecs", "unknown time unit"),
            ("HTTP_ADDR", "localhost", "invalid socket address"),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "carrier-pigeon",
                "not supported",
            ),
        ] {
            rejected_with(var, value, problem);
        }
    }

    /// The one line a bad value gets: it names the variable and says the problem.
    fn rejected_with(var: &str, value: &str, problem: &str) -> String {
        let err = common(&[(var, value)]).expect_err(value);
        assert_eq!(err.var, var);
        let line = err.to_string();
        assert!(
            line.starts_with(&format!("invalid configuration: {var}=")),
            "{line}"
        );
        assert!(line.contains(problem), "{value}: {line}");
        line
    }

    #[test]
    fn span_batch_settings_default_to_the_sdks_and_a_batch_never_exceeds_the_queue() {
        let c = common(&[]).expect("defaults are valid");
        assert_eq!(
            c.span_batch,
            SpanBatch {
                max_queue_size: 2048,
                max_export_batch_size: 512,
                scheduled_delay: Duration::from_millis(5000),
            }
        );
        let small = common(&[("OTEL_BSP_MAX_QUEUE_SIZE", "100")]).expect("valid");
        assert_eq!(small.span_batch.max_export_batch_size, 100);
        let err = common(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "200"),
        ])
        .expect_err("batch above queue");
        assert_eq!(err.var, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE");
        assert!(err.to_string().contains("OTEL_BSP_MAX_QUEUE_SIZE"), "{err}");
    }

    #[test]
    fn the_otlp_exporters_own_variables_are_checked_and_headers_never_shown() {
        let c = common(&[]).expect("defaults are valid");
        assert_eq!(c.otlp_export.timeout, Duration::from_millis(10_000));
        let c = common(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20S3CRET, x-tenant = blue , ",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "TRUE"),
        ])
        .expect("valid");
        assert_eq!(c.otlp_export.timeout, Duration::from_millis(2500));
        // As the Pulumi stack writes it: a space rather than %20 is still a header value.
        common(&[("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer S3CRET")])
            .expect("a plain space is valid");

        for (var, value, problem) in [
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "invalid digit"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0", "must be between 1 and"),
            (
                "OTEL_EXPORTER_OTLP_COMPRESSION",
                "gzip",
                "does not compress",
            ),
            ("OTEL_EXPORTER_OTLP_INSECURE", "yes", "true or false"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=S3CRET,S3CRET",
                "entry 2 is not key=value",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api key=S3CRET",
                "\"api key\" is not a header name",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=S3CRET%0A",
                "entry 1 (api-key): the value",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=",
                "empty key or value",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4318/v1/traces",
                "set OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "api-key=S3CRET",
                "set OTEL_EXPORTER_OTLP_HEADERS",
            ),
        ] {
            let line = rejected_with(var, value, problem);
            assert!(!line.contains("S3CRET"), "a header value shown: {line}");
        }
    }

    #[test]
    fn blank_values_mean_unset_and_unknown_variables_are_ignored() {
        let c = common(&[("SHUTDOWN_GRACE", "  "), ("SOMETHING_ELSE", "x")]).expect("valid");
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn the_variables_read_are_the_fields_of_the_config() {
        let names = CommonConfig::variables();
        for name in [
            "HTTP_ADDR",
            "DATABASE_URL",
            "AMQP_URL",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "RUST_LOG",
        ] {
            assert!(names.contains(&name.to_owned()), "{names:?}");
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
        for (raw, shown) in [
            (
                "postgres://u@127.0.0.1:1/x?password=S3CRET",
                "postgres://u@127.0.0.1:1/x?password=***",
            ),
            (
                "postgres://u@h/x?sslmode=require&sslpassword=S3CRET&application_name=a",
                "postgres://u@h/x?sslmode=require&sslpassword=***&application_name=a",
            ),
            (
                "amqp://u:S3CRET@h:5672/%2f?heartbeat=10",
                "amqp://u:***@h:5672/%2f?heartbeat=10",
            ),
            ("postgres://h?PASSWORD=S3CRET", "postgres://h?PASSWORD=***"),
        ] {
            assert_eq!(redact_url(raw), shown);
            assert_eq!(SecretUrl::new(raw).to_string(), shown);
        }
    }
}

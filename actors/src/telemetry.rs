//! Logs and traces: one function builds the subscriber from config, [`Telemetry::shutdown`]
//! flushes it.
//!
//! Spans are recorded for OpenTelemetry and exported over OTLP only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and only at INFO and above: recording spans that
//! nobody exports cost about 5% of a request's CPU. Without an exporter the W3C trace context
//! still crosses this node unchanged (HTTP → outbox row → AMQP headers → consumer → next
//! outbox row): [`Causation::current`] falls back to the context that came in, so a trace
//! stays one trace even through a node that exports nothing.
//! Remote parents are set right after a span is created and before it is entered:
//! tracing-opentelemetry ignores `set_parent` on a span that is already entered.

mod log_fields;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, FilterFn, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{CommonConfig, OtlpProtocol};
use crate::outbox::Causation;

/// The installed tracer provider; flush it on shutdown.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// What the OpenTelemetry layer records: INFO and above, except the crates whose own spans
/// would trace the exporter itself. A static filter (decided once per callsite): a dynamic
/// per-layer filter was seen to disable a span now and then after an actor's panic.
fn exported() -> Targets {
    Targets::new().with_default(LevelFilter::INFO).with_targets(
        [
            "opentelemetry",
            "opentelemetry_sdk",
            "opentelemetry_otlp",
            "opentelemetry_http",
            "tonic",
            "h2",
            "hyper",
            "hyper_util",
            "reqwest",
            "tower",
        ]
        .map(|t| (t, LevelFilter::OFF)),
    )
}

/// The target of spans that exist for traces alone: the database client spans and the
/// producer spans, with the OpenTelemetry attributes a trace backend shows and nothing a
/// log line needs (a warning names its own event or order). Logs leave them out, so that
/// without an exporter they are never built: formatting their fields for the log layer
/// and colouring them (below) made the nodes' CPU per order at the default `RUST_LOG=info`
/// 7% higher than with spans off; 3–4% since (at 1,500 orders/s).
pub const TRACE_ONLY: &str = "trace_only";

/// The log lines, text or JSON, to `writer`. Of what `filter` (`RUST_LOG`) lets through, it
/// sees every event and the spans that give an event its context (the request, the
/// delivery, supervision), not [`TRACE_ONLY`] ones. One filter decides both: nested
/// per-layer filters would only hide those spans from the layer, and the registry would
/// still build them.
fn log_layer<S, W>(
    json: bool,
    ansi: bool,
    writer: W,
    filter: EnvFilter,
) -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let lines = if json {
        fmt.json().with_current_span(true).boxed()
    } else {
        let text = fmt.with_target(false).with_ansi(ansi);
        if ansi {
            text.boxed()
        } else {
            text.fmt_fields(log_fields::PlainFields).boxed()
        }
    };
    // The hint keeps `RUST_LOG`'s own as the combined filter's: without one, the combination
    // has none, the process's maximum level becomes TRACE, and crates that check the level
    // before formatting (lapin's promises) format trace text on every publish for nothing.
    let logged = FilterFn::new(|meta| !(meta.is_span() && meta.target() == TRACE_ONLY))
        .with_max_level_hint(LevelFilter::TRACE);
    lines.with_filter(filter.and(logged))
}

/// The span exporter. Its headers and compression it reads from the process environment
/// itself; [`crate::config::OtlpExport`] has checked them. The timeout is given here, so
/// the checked value is the one used.
fn exporter(
    endpoint: &str,
    protocol: OtlpProtocol,
    timeout: Duration,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .build(),
        OtlpProtocol::HttpProtobuf => {
            // OTEL_EXPORTER_OTLP_ENDPOINT is a base URL: the signal path is appended.
            let base = endpoint.trim_end_matches('/');
            let url = if base.ends_with("/v1/traces") {
                base.to_owned()
            } else {
                format!("{base}/v1/traces")
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .with_timeout(timeout)
                .build()
        }
    };
    built.map_err(|e| {
        format!("invalid configuration: OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?}: {e}")
    })
}

/// Installs the global subscriber: logs (text or JSON, filtered by `RUST_LOG`) and traces.
/// The batch processor takes its queue, batch size and delay from the checked `OTEL_BSP_*`
/// settings ([`crate::config::SpanBatch`]).
pub fn init(config: &CommonConfig) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_new(&config.log_filter).map_err(|e| {
        format!(
            "invalid configuration: RUST_LOG={:?}: {e}",
            config.log_filter
        )
    })?;
    let mut builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(config.service_name.clone())
            .build(),
    );
    let exporting = match &config.otel_endpoint {
        Some(endpoint) => {
            let batch = BatchConfigBuilder::default()
                .with_max_queue_size(config.span_batch.max_queue_size)
                .with_max_export_batch_size(config.span_batch.max_export_batch_size)
                .with_scheduled_delay(config.span_batch.scheduled_delay)
                .build();
            builder = builder.with_span_processor(
                BatchSpanProcessor::builder(exporter(
                    endpoint,
                    config.otel_protocol,
                    config.otlp_export.timeout,
                )?)
                .with_batch_config(batch)
                .build(),
            );
            true
        }
        None => false,
    };
    let provider = builder.build();
    // Colours only for a person at a terminal: escape codes in a log file or a collector
    // are noise.
    let ansi = std::io::stdout().is_terminal();
    // Already installed (several nodes in one test process): the first one stays.
    // Without an exporter there is no OpenTelemetry layer at all: an absent (`None`) layer
    // still counts as one that wants every span, so trace-only spans would be built.
    let _ = if exporting {
        let otel = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(config.service_name.clone()))
            .with_filter(exported());
        tracing_subscriber::registry()
            .with(otel)
            .with(log_layer(config.log_json, ansi, std::io::stdout, filter))
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(log_layer(config.log_json, ansi, std::io::stdout, filter))
            .try_init()
    };
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Flushes and stops the exporter. The SDK's shutdown blocks, so it runs off the
    /// async runtime.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// One database client span per request (or delivery) of a batch, each below its own
/// request's span, for work done for the whole batch at once: every order's trace still
/// shows its `INSERT orders` (or `UPDATE orders`, `INSERT invoices`). Drop them when the
/// batch's transaction ended.
pub fn batch_spans<'a>(
    name: &'static str,
    operation: &'static str,
    parents: impl ExactSizeIterator<Item = &'a tracing::Span>,
) -> Vec<tracing::Span> {
    let size = parents.len();
    parents
        .map(|parent| {
            tracing::info_span!(
                target: TRACE_ONLY,
                parent: parent,
                "db",
                otel.name = name,
                otel.kind = "client",
                db.system.name = "postgresql",
                db.operation.name = operation,
                db.operation.batch.size = size,
            )
        })
        .collect()
}

/// The context a `traceparent`/`tracestate` pair describes (empty if absent or invalid).
pub fn remote_context(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> opentelemetry::Context {
    let mut carrier = HashMap::new();
    if let Some(tp) = traceparent {
        carrier.insert("traceparent".to_owned(), tp.to_owned());
    }
    if let Some(ts) = tracestate {
        carrier.insert("tracestate".to_owned(), ts.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of the remote context described by `traceparent`, if any. Call it
/// before the span is entered.
pub fn set_remote_parent(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    let cx = remote_context(traceparent, tracestate);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// `(traceparent, tracestate)` of `span`, when it has a valid trace context.
pub fn trace_headers(span: &tracing::Span) -> (Option<String>, Option<String>) {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return (None, None);
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    (
        carrier.remove("traceparent"),
        carrier.remove("tracestate").filter(|s| !s.is_empty()),
    )
}

impl Causation {
    /// The cause of an event written now: the current span (so the consumer's trace
    /// continues from here), falling back to `fallback`'s context when no span is active.
    pub fn current(request_id: Option<String>, fallback: &Causation) -> Causation {
        let (traceparent, tracestate) = trace_headers(&tracing::Span::current());
        match traceparent {
            Some(tp) => Causation {
                traceparent: Some(tp),
                tracestate,
                request_id,
            },
            None => Causation {
                traceparent: fallback.traceparent.clone(),
                tracestate: fallback.tracestate.clone(),
                request_id,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;

    /// Log lines written to memory (also for `log_fields`' tests).
    #[derive(Clone, Default)]
    pub(super) struct Lines(pub(super) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut lines = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            lines.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Lines {
        type Writer = Lines;
        fn make_writer(&'w self) -> Lines {
            self.clone()
        }
    }

    fn logged(json: bool, log: impl FnOnce()) -> String {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(log_layer(
            json,
            false,
            lines.clone(),
            EnvFilter::new("info"),
        ));
        tracing::subscriber::with_default(subscriber, log);
        let bytes = lines.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn log_lines_carry_the_request_context_but_not_the_trace_only_spans() {
        for json in [false, true] {
            let out = logged(json, || {
                let request = tracing::info_span!("http.request", request_id = "req-7");
                let _request = request.enter();
                let db =
                    tracing::info_span!(target: TRACE_ONLY, "db", db.system.name = "postgresql");
                let _db = db.enter();
                tracing::warn!(order = 42, "request failed");
            });
            assert!(out.contains("request failed"), "{out}");
            assert!(
                out.contains("req-7"),
                "the request's span gives the context: {out}"
            );
            assert!(
                !out.contains("postgresql"),
                "a trace-only span is not logged: {out}"
            );
            assert!(
                !out.contains('\u{1b}'),
                "no colour codes when not at a terminal: {out}"
            );
        }
    }

    #[test]
    fn the_log_layer_keeps_the_filters_level_as_the_process_maximum() {
        let layer = log_layer::<tracing_subscriber::Registry, _>(
            false,
            false,
            std::io::sink,
            EnvFilter::new("info"),
        );
        assert_eq!(layer.max_level_hint(), Some(LevelFilter::INFO));
    }

    #[test]
    fn traceparent_round_trips_through_a_context() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote_context(Some(tp), None);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(
            !remote_context(Some("garbage"), None)
                .span()
                .span_context()
                .is_valid()
        );
    }
}

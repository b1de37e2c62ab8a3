//! With no exporter configured, the spans that exist for traces alone are not built at all,
//! and the process's maximum log level stays `RUST_LOG`'s. Its own test binary, because the
//! subscriber `telemetry::init` installs is the process's global one, as in a node.

use actors::config::{CommonConfig, Vars};
use actors::telemetry::{self, TRACE_ONLY};
use tracing::level_filters::LevelFilter;

#[test]
fn without_an_exporter_trace_only_spans_are_never_built() {
    let config = CommonConfig::from_vars(
        &Vars::from_pairs([("RUST_LOG", "info")]),
        "trace-only-test",
        "127.0.0.1:1",
        "postgres://localhost/x",
    )
    .expect("valid configuration");
    let _telemetry = telemetry::init(&config).expect("telemetry starts");

    let request = tracing::info_span!("http.request", request_id = "r-1");
    assert!(
        !request.is_disabled(),
        "the request span is the logs' context"
    );
    let _in = request.enter();
    let db = tracing::info_span!(target: TRACE_ONLY, "db", db.system.name = "postgresql");
    assert!(db.is_disabled(), "a trace-only span is not built");
    assert_eq!(LevelFilter::current(), LevelFilter::INFO);
}

//! The tracing subscriber: one function builds it from config, `init` installs it once.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::CommonConfig;

/// Installs the global subscriber (text or JSON logs filtered by `RUST_LOG`). Returns an
/// error line when `RUST_LOG` cannot be parsed.
pub fn init(config: &CommonConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log_filter).map_err(|e| {
        format!(
            "invalid configuration: RUST_LOG={:?}: {e}",
            config.log_filter
        )
    })?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = if config.log_json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init()
    };
    // Already installed (tests start several nodes in one process): keep the first.
    let _ = result;
    Ok(())
}

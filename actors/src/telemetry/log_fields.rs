//! How the text log lines write fields, when no one reads them at a terminal.
//!
//! tracing-subscriber's `DefaultFields` writes each field through two styled strings (an
//! italic name and a dimmed `=`), which costs even with colours off; the log layer formats
//! every span's fields when the span is made and again when a field is recorded, whether a
//! line is ever logged in it or not, so for a request span that was ~5% of orders-node's
//! instructions per request. [`PlainFields`] writes the same `name=value` text directly,
//! and leaves out `otel.*` fields (the span kind and name that tracing-opentelemetry reads:
//! nothing a log line needs). Every field it does not write as plain text itself (an
//! event's message, an error, a raw identifier) it hands to `DefaultVisitor`, so escaping
//! and layout stay the crate's own.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// `name=value` fields, space-separated, as `DefaultFields` writes them without colours.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'w> {
    writer: Writer<'w>,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// The crate's own visitor writes this field, after what was written so far.
    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.is_empty = false;
    }

    fn is_plain(name: &str) -> bool {
        name != "message" && !name.starts_with("r#")
    }

    /// Fields a log line leaves out: the crate's own skip (`log.*`, metadata of a line
    /// from the `log` crate) and the OpenTelemetry-only ones.
    fn is_skipped(name: &str) -> bool {
        name.starts_with("log.") || name.starts_with("otel.")
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if Self::is_plain(field.name()) {
            self.record_debug(field, &value);
        } else if self.result.is_ok() {
            self.delegate(|v| v.record_str(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_ok() && !Self::is_skipped(field.name()) {
            self.delegate(|v| v.record_error(field, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || Self::is_skipped(name) {
            return;
        }
        if !Self::is_plain(name) {
            self.delegate(|v| v.record_debug(field, value));
            return;
        }
        if self.is_empty {
            self.is_empty = false;
        } else if let Err(e) = self.writer.write_char(' ') {
            self.result = Err(e);
            return;
        }
        self.result = self
            .writer
            .write_str(name)
            .and_then(|()| self.writer.write_char('='))
            .and_then(|()| write!(self.writer, "{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::PoisonError;

    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::telemetry::tests::Lines;

    /// What a request span and an event in it give, with the given field formatter.
    fn lines<N>(fields: N) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let lines = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(lines.clone())
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let path = "/orders";
            let span = tracing::info_span!(
                "http.request",
                otel.kind = "server",
                http.request.method = %"POST",
                url.path = %path,
                http.response.status_code = tracing::field::Empty,
                request_id = "req \"7\"",
            );
            span.record("http.response.status_code", 503_u16);
            let _in = span.enter();
            let error = std::io::Error::other("broker gone");
            tracing::warn!(
                r#type = "x",
                error = &error as &(dyn std::error::Error + 'static),
                count = 3,
                ok = true,
                "request failed: \u{1b}[31m"
            );
        });
        let bytes = lines.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn writes_what_the_default_writes_without_the_otel_fields() {
        let plain = lines(PlainFields);
        let default = lines(DefaultFields::new()).replace("otel.kind=\"server\" ", "");
        assert!(!plain.contains("otel."), "{plain}");
        assert_eq!(plain, default);
        // The text holds every other field, and the message's escape code is escaped.
        for part in [
            "http.request.method=POST",
            "url.path=/orders",
            "request_id=\"req \\\"7\\\"\"",
            "http.response.status_code=503",
            "type=\"x\"",
            "error=broker gone",
            "count=3 ok=true",
        ] {
            assert!(plain.contains(part), "{part} in {plain}");
        }
        assert!(!plain.contains('\u{1b}'), "{plain}");
    }
}

//! A bad configuration value stops the real binary at start-up with one line naming it.

use std::process::Command;

#[test]
fn a_bad_value_stops_the_binary_with_one_line_naming_the_variable() {
    for (var, value) in [
        ("PAYMENT_TERMS", "soon"),
        ("HTTP_ADDR", "everywhere"),
        ("AMQP_PREFETCH", "0"),
        ("DATABASE_URL", "mysql://x"),
        // tokio would read it itself and panic with a backtrace instead.
        ("TOKIO_WORKER_THREADS", "0"),
        ("TOKIO_WORKER_THREADS", "many"),
        // The tracing SDK would ignore it silently, or drop every span on a queue of 0.
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        // The OTLP exporter would use its 10 s default, or send without the header.
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_invoices-node"))
            .env(var, value)
            .output()
            .expect("binary runs");
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

#[test]
fn an_otlp_header_value_never_reaches_the_start_up_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_invoices-node"))
        .env("OTEL_EXPORTER_OTLP_HEADERS", "api-key=S3CRET,x-tenant")
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(2));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{all}");
    assert!(!all.contains("S3CRET"), "leaked: {all}");
}

#[test]
fn an_unreachable_database_stops_the_binary_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_invoices-node"))
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/invoices")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach PostgreSQL"), "{stderr}");
}

#[test]
fn no_form_of_password_in_a_url_reaches_the_start_up_error() {
    for (var, url) in [
        ("DATABASE_URL", "postgres://u@127.0.0.1:1/x?password=S3CRET"),
        ("DATABASE_URL", "postgres://u:S3CRET@127.0.0.1:1/x"),
        (
            "DATABASE_URL",
            "postgres://u@127.0.0.1:1/x?sslpassword=S3CRET&sslmode=disable",
        ),
        ("AMQP_URL", "http://u:S3CRET@127.0.0.1:1/?password=S3CRET"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_invoices-node"))
            .env(var, url)
            .env("HTTP_ADDR", "127.0.0.1:0")
            .output()
            .expect("binary runs");
        assert!(!out.status.success(), "{var}={url}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("S3CRET"), "{var}={url} leaked: {all}");
        assert!(all.contains(var) || all.contains("PostgreSQL"), "{all}");
    }
}

//! Logging setup: structured `tracing` output, human by default, JSON on request.
//!
//! Owns the subscriber and its filter (`RUST_LOG`, default `info`, with the connection
//! pool's per-connection warnings left out: a database outage is reported once, by
//! `outage`). Does not decide what is logged: each service logs its own events, one line per
//! run start and finish.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line a person reads.
    Human,
    /// One JSON object per line (`log_format = "json"`).
    Json,
}

/// Installs the subscriber (once; a second call keeps the first).
pub fn init(format: Format) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn,deadpool=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if format == Format::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

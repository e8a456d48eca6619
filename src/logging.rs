//! Logging setup: structured `tracing` output, human by default, JSON on request.
//!
//! Owns the subscriber and its filter (`RUST_LOG`, default `info`, with the connection
//! pool's per-connection warnings left out: a database outage is reported once, by
//! `outage`). Does not decide what is logged: each service logs its own events, one line per
//! run start and finish.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn,deadpool=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

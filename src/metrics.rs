//! Metrics: the Prometheus endpoint at `metrics_listen` and the series of SPEC §4.
//!
//! Owns the names, labels and histogram buckets of every series, and installing the
//! exporter. Services call the small functions here at the events they own (a run started,
//! a run finished, a failed statement); nothing else in the code names a metric. With no
//! `metrics_listen` the functions cost a no-op recorder call.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `sisy_runs_started_total` | counter | job |
//! | `sisy_runs_finished_total` | counter | job, state |
//! | `sisy_run_duration_seconds` | histogram | job |
//! | `sisy_dispatch_latency_seconds` | histogram (start − due, database clock) | |
//! | `sisy_running` / `sisy_capacity` | gauge | |
//! | `sisy_claim_errors_total` | counter | |
//! | `sisy_db_errors_total` | counter | service |

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub const RUNS_STARTED: &str = "sisy_runs_started_total";
pub const RUNS_FINISHED: &str = "sisy_runs_finished_total";
pub const RUN_DURATION: &str = "sisy_run_duration_seconds";
pub const DISPATCH_LATENCY: &str = "sisy_dispatch_latency_seconds";
pub const RUNNING: &str = "sisy_running";
pub const CAPACITY: &str = "sisy_capacity";
pub const CLAIM_ERRORS: &str = "sisy_claim_errors_total";
pub const DB_ERRORS: &str = "sisy_db_errors_total";

/// Dispatch latency: a scheduler should start within milliseconds; seconds mean trouble.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Run durations: from a `true` to a nightly backup.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0,
];

/// Serves `/metrics` on `listen`. Call once, inside the runtime.
pub fn install(listen: SocketAddr) -> Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Full(DISPATCH_LATENCY.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(RUN_DURATION.into()), DURATION_BUCKETS)?
        .install()
        .with_context(|| {
            format!("cannot serve metrics on {listen} (metrics_listen): is the address in use?")
        })?;
    describe();
    Ok(())
}

fn describe() {
    metrics::describe_counter!(RUNS_STARTED, "Runs started on this host, by job");
    metrics::describe_counter!(
        RUNS_FINISHED,
        "Runs finished on this host, by job and final state"
    );
    metrics::describe_histogram!(
        RUN_DURATION,
        metrics::Unit::Seconds,
        "Wall-clock duration of runs"
    );
    metrics::describe_histogram!(
        DISPATCH_LATENCY,
        metrics::Unit::Seconds,
        "Start minus due time, by the database clock"
    );
    metrics::describe_gauge!(RUNNING, "Runs in progress on this host");
    metrics::describe_gauge!(CAPACITY, "Configured maximum of concurrent runs");
    metrics::describe_counter!(CLAIM_ERRORS, "Claims that failed");
    metrics::describe_counter!(DB_ERRORS, "Database statements that failed, by service");
}

pub fn run_started(job: &str, latency: Duration) {
    metrics::counter!(RUNS_STARTED, "job" => job.to_string()).increment(1);
    metrics::histogram!(DISPATCH_LATENCY).record(latency.as_secs_f64());
}

pub fn run_finished(job: &str, state: &str, duration: Duration) {
    metrics::counter!(RUNS_FINISHED, "job" => job.to_string(), "state" => state.to_string())
        .increment(1);
    metrics::histogram!(RUN_DURATION, "job" => job.to_string()).record(duration.as_secs_f64());
}

pub fn load(running: usize, capacity: usize) {
    metrics::gauge!(RUNNING).set(running as f64);
    metrics::gauge!(CAPACITY).set(capacity as f64);
}

pub fn claim_error() {
    metrics::counter!(CLAIM_ERRORS).increment(1);
}

pub fn db_error(service: &'static str) {
    metrics::counter!(DB_ERRORS, "service" => service).increment(1);
}

//! Metrics: the Prometheus endpoint at `metrics_listen` and its series (README: "Metrics and logs").
//!
//! Owns the names, labels and histogram buckets of every series, and installing the
//! exporter. Services call the small functions here at the events they own (a run started,
//! a run finished, a failed statement); nothing else in the code names a metric. With no
//! `metrics_listen` the functions cost a no-op recorder call.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `sisy_runs_started_total` | counter | job (capped) |
//! | `sisy_runs_finished_total` | counter | job (capped), state |
//! | `sisy_run_duration_seconds` | histogram | |
//! | `sisy_dispatch_latency_seconds` | histogram (start − due, database clock) | |
//! | `sisy_running` / `sisy_capacity` | gauge | |
//! | `sisy_claim_errors_total` | counter | |
//! | `sisy_db_errors_total` | counter | service |
//!
//! Cardinality is bounded whatever the number of jobs: the duration histogram (16 bucket
//! series, a sum and a count) has no job label, and the per-job counters name at most
//! [`MAX_JOB_LABELS`] jobs per guardian process, the first it runs; runs of any other job are
//! counted under `job="(other)"`. Per-job durations are in `sisy.runs`, where a query can
//! select the jobs it wants.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
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

/// Most distinct `job` label values of one guardian process: a host running more distinct
/// jobs counts the rest under [`OTHER_JOBS`]. Two counters with a few states each make this
/// a few thousand series per host at most.
pub const MAX_JOB_LABELS: usize = 1000;
/// The `job` label value of the runs of jobs beyond [`MAX_JOB_LABELS`].
pub const OTHER_JOBS: &str = "(other)";

/// The job names that have their own label value, the first ones seen.
struct JobLabels {
    cap: usize,
    named: Mutex<HashSet<String>>,
}

impl JobLabels {
    fn new(cap: usize) -> JobLabels {
        JobLabels {
            cap,
            named: Mutex::new(HashSet::new()),
        }
    }

    /// The label value for `job`: its name while there is room, else [`OTHER_JOBS`].
    fn label(&self, job: &str) -> String {
        // A poisoned lock only means another thread panicked while inserting a name: the
        // set is still a set.
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        if named.contains(job) {
            return job.to_string();
        }
        if named.len() < self.cap {
            named.insert(job.to_string());
            return job.to_string();
        }
        OTHER_JOBS.to_string()
    }
}

static JOB_LABELS: LazyLock<JobLabels> = LazyLock::new(|| JobLabels::new(MAX_JOB_LABELS));

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
    record_started(&JOB_LABELS, job, latency);
}

pub fn run_finished(job: &str, state: &str, duration: Duration) {
    record_finished(&JOB_LABELS, job, state, duration);
}

fn record_started(labels: &JobLabels, job: &str, latency: Duration) {
    metrics::counter!(RUNS_STARTED, "job" => labels.label(job)).increment(1);
    metrics::histogram!(DISPATCH_LATENCY).record(latency.as_secs_f64());
}

fn record_finished(labels: &JobLabels, job: &str, state: &str, duration: Duration) {
    metrics::counter!(RUNS_FINISHED, "job" => labels.label(job), "state" => state.to_string())
        .increment(1);
    metrics::histogram!(RUN_DURATION).record(duration.as_secs_f64());
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

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// Many distinct jobs, rendered by the real exporter: the histogram is one series set
    /// and the counters name `cap` jobs plus "(other)".
    #[test]
    fn series_stay_bounded_with_many_jobs() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(RUN_DURATION.into()), DURATION_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        let labels = JobLabels::new(3);
        metrics::with_local_recorder(&recorder, || {
            for round in 0..2 {
                for i in 0..50 {
                    let job = format!("job-{i}");
                    record_started(&labels, &job, Duration::from_millis(round));
                    record_finished(&labels, &job, "succeeded", Duration::from_millis(i));
                }
            }
        });
        let text = handle.render();
        let lines = |prefix: &str| -> Vec<&str> {
            text.lines().filter(|l| l.starts_with(prefix)).collect()
        };
        assert_eq!(
            lines("sisy_run_duration_seconds_count"),
            ["sisy_run_duration_seconds_count 100"]
        );
        assert_eq!(
            lines("sisy_run_duration_seconds_bucket").len(),
            DURATION_BUCKETS.len() + 1
        );
        let started = lines("sisy_runs_started_total{");
        assert_eq!(started.len(), 4, "{text}");
        for i in 0..3 {
            assert!(
                started.contains(&format!("sisy_runs_started_total{{job=\"job-{i}\"}} 2").as_str()),
                "{text}"
            );
        }
        assert!(
            started.contains(&"sisy_runs_started_total{job=\"(other)\"} 94"),
            "{text}"
        );
        assert_eq!(lines("sisy_runs_finished_total{").len(), 4, "{text}");
    }
}

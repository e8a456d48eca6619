//! `sisy status`: the fleet on one screen, from one statement over the monitoring views.

use anyhow::Result;
use serde_json::Value;
use tokio_postgres::Client;

use super::output::{self, Output};
use super::sql_error;
use crate::db::cli as q;

pub async fn run(client: &Client, output: Output) -> Result<()> {
    let row = client
        .query_one(q::STATUS, &[])
        .await
        .map_err(|e| sql_error(e, ""))?;
    let s: Value = row.get(0);
    if output == Output::Json {
        outln!("{s}");
        return Ok(());
    }
    outln!(
        "hosts    {} alive ({} draining), {} dead; capacity {}",
        s["hosts_alive"],
        s["hosts_draining"],
        s["hosts_dead"],
        s["capacity"]
    );
    outln!("jobs     {} ({} suspended)", s["jobs"], s["jobs_suspended"]);
    outln!(
        "runs     {} running, {} pending",
        s["running"],
        s["pending"]
    );
    outln!(
        "last 24h {} occurrences missed (expired), {} skipped",
        s["missed_24h"],
        s["skipped_24h"]
    );
    section(
        &s["failing_jobs"],
        "failing jobs",
        &[
            ("name", "JOB"),
            ("consecutive_failures", "FAILS"),
            ("last_state", "LAST"),
        ],
    );
    section(
        &s["schedule_errors"],
        "unusable schedules",
        &[("name", "JOB"), ("schedule_error", "ERROR")],
    );
    section(
        &s["overdue_jobs"],
        "overdue jobs (no guardian serving their pool?)",
        &[("name", "JOB"), ("pool", "POOL"), ("next_due", "DUE (UTC)")],
    );
    section(
        &s["dead_hosts"],
        "dead hosts",
        &[("name", "HOST"), ("last_seen", "LAST SEEN (UTC)")],
    );
    Ok(())
}

fn section(rows: &Value, title: &str, columns: &[(&str, &str)]) {
    let rows = rows.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return;
    }
    outln!("\n{title}:");
    out!("{}", output::table(&rows, columns));
}

//! Scenario 4, idle cost: what a guardian costs when nothing is due, and what 50 of them cost
//! the database.
//!
//! One guardian (shipped defaults: 5 s heartbeat, 30 s lease) on a database of its own, and
//! 50 guardians on another, each database holding 10 daily jobs none of which falls due
//! within the hour. After a settling period, one window of [`WINDOW`]:
//! - the single guardian's resident memory (VmRSS, and its peak VmHWM) and CPU time from
//!   /proc;
//! - the statements its database executed, from `pg_stat_statements` filtered to that
//!   database (every statement a client sends is one entry, utility statements such as
//!   BEGIN included; the benchmark's own queries go to another database, so they are not
//!   counted), cross-checked with the database's committed transactions (`pg_stat_database`,
//!   which backends report with up to a second's delay);
//! - for the 50: the CPU time of their database's backends, and of all PostgreSQL processes
//!   (the latter also serves the single guardian and the background workers).

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::harness::{self, Cluster, Db, PRODUCTION, progress, round, target};
use crate::util::Guardian;

const WINDOW: Duration = Duration::from_secs(60);
/// Start-up traffic (registration, seeding, the first look) is over by then.
const SETTLE: Duration = Duration::from_secs(10);
const MANY: usize = 50;
/// The reaper's period (`service::reaper::INTERVAL`) and the statements of its pass.
const REAPER_INTERVAL: Duration = Duration::from_secs(600);
const REAPER_STATEMENTS: [&str; 3] = ["-- Housekeeping", "hosts_prune", "runs_prune"];

pub async fn run(cluster: &Cluster) -> Result<Value> {
    let one_db = cluster.database().await?;
    let many_db = cluster.database().await?;
    for db in [&one_db, &many_db] {
        db.client
            .execute(
                "INSERT INTO sisy.jobs (name, command, schedule)
                 SELECT format('daily-%s', i), 'true',
                        format('%s %s * * *', i, (extract(hour FROM now() AT TIME ZONE 'UTC')::int + 2) % 24)
                   FROM generate_series(1, 10) i",
                &[],
            )
            .await?;
    }
    progress(&format!("idle: 1 guardian, and {MANY} on another database"));
    let one = harness::fleet(&one_db, 1, PRODUCTION).await;
    let many = harness::fleet(&many_db, MANY, PRODUCTION).await;
    tokio::time::sleep(SETTLE).await;

    let pid = one[0]
        .pid()
        .ok_or_else(|| anyhow::anyhow!("guardian pid"))?;
    let many_pids: Vec<i32> = many.iter().filter_map(Guardian::pid).collect();
    let many_backends = cluster.backends(&many_db).await?;
    cluster.reset_statements(&one_db).await?;
    cluster.reset_statements(&many_db).await?;
    let xacts0 = xacts(cluster, &one_db).await?;
    let cpu0 = harness::cpu_of(&[pid]);
    let many_cpu0 = harness::cpu_of(&many_pids);
    let backends_cpu0 = harness::cpu_of(&many_backends);
    let pg_cpu0 = cluster.postgres_cpu();
    progress(&format!("idle: measuring for {WINDOW:?}"));
    let mut peak_rss = 0;
    let steps = 12;
    for _ in 0..steps {
        tokio::time::sleep(WINDOW / steps).await;
        peak_rss = peak_rss.max(harness::memory_kib(pid).0);
    }
    let minutes = WINDOW.as_secs_f64() / 60.0;
    let pct = |d: Duration| round(d.as_secs_f64() / WINDOW.as_secs_f64() * 100.0, 3);
    let cpu = harness::cpu_of(&[pid]) - cpu0;
    let (rss, hwm) = harness::memory_kib(pid);
    let statements = cluster.statements(&one_db).await?;
    let per_min = statements.total().calls as f64 / minutes;
    // The reaper passes once every REAPER_INTERVAL, the first a minute after start: inside
    // this window. Its statements count at their long-run rate, not as a minute's.
    let by_statement = statements.to_json();
    let reaper_calls: f64 = by_statement
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| REAPER_STATEMENTS.iter().any(|r| name.starts_with(r)))
        .filter_map(|(_, figures)| figures["calls"].as_f64())
        .sum();
    let long_run =
        per_min - reaper_calls / minutes + reaper_calls * 60.0 / REAPER_INTERVAL.as_secs_f64();
    let xacts = (xacts(cluster, &one_db).await? - xacts0) as f64 / minutes;
    let many_statements = cluster.statements(&many_db).await?;
    let backends_cpu = harness::cpu_of(&many_backends) - backends_cpu0;
    let pg_cpu = cluster.postgres_cpu() - pg_cpu0;
    let many_cpu = harness::cpu_of(&many_pids) - many_cpu0;
    let mib = |kib: u64| round(kib as f64 / 1024.0, 1);
    Ok(json!({
        "window_s": WINDOW.as_secs(),
        "guardian_config": "defaults: heartbeat_interval 5s, lease 30s, capacity 16",
        "one_guardian": {
            "rss_mib": mib(rss),
            "rss_sampled_max_mib": mib(peak_rss),
            "peak_rss_since_start_mib": mib(hwm),
            "rss": target(mib(peak_rss), 20.0, true, "resident memory <= 20 MB"),
            "cpu_pct_of_a_core": pct(cpu),
            "cpu": target(pct(cpu), 0.5, true, "CPU <= 0.5 % of a core"),
            "statements_per_min": round(per_min, 1),
            "reaper_statements_in_window": reaper_calls,
            "statements_per_min_long_run": round(long_run, 1),
            "statements": target(
                round(long_run, 1),
                20.0,
                true,
                "<= 20 database statements a minute (long run: the reaper's pass every 10 min counts a tenth)",
            ),
            "transactions_per_min": round(xacts, 1),
            "by_statement": by_statement,
        },
        "fifty_guardians": {
            "guardians": MANY,
            "statements_per_min": round(many_statements.total().calls as f64 / minutes, 1),
            "their_backends_cpu_pct_of_a_core": pct(backends_cpu),
            "all_postgres_cpu_pct_of_a_core": pct(pg_cpu),
            "guardians_cpu_pct_of_a_core": pct(many_cpu),
        },
    }))
}

/// Committed and rolled-back transactions of `db` so far.
async fn xacts(cluster: &Cluster, db: &Db) -> Result<i64> {
    Ok(cluster
        .admin
        .query_one(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datid = $1",
            &[&db.oid],
        )
        .await?
        .get(0))
}

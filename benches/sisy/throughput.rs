//! Scenario 2, throughput: end-to-end runs per second of a job running `true` (pending →
//! claimed → started → finished → recorded), 2 guardians of the default capacity, against the
//! ceiling this machine sets: how fast it spawns and reaps `/bin/sh -c true` with the same
//! parallelism (2 × capacity), measured in the same run from this process.
//!
//! The runs are queued at once (what `sisy.trigger` inserts, one row each) and the figure is
//! how fast the fleet drains them. CPU is attributed from /proc, per run: the guardians, their
//! shim spawners, the pooled run shims, the job shells (reaped by the shims) and PostgreSQL;
//! the raw measurement's child side (`raw_shell_cpu_us`) is what one shell costs by itself.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use crate::harness::{self, Cluster, PRODUCTION, progress, round, target};
use crate::util::Guardian;

const GUARDIANS: usize = 2;
/// The guardian's default capacity.
const CAPACITY: usize = 16;
const RUNS: i64 = 4000;

pub async fn run(cluster: &Cluster) -> Result<Value> {
    let parallelism = GUARDIANS * CAPACITY;
    progress("throughput: raw spawn rate of /bin/sh -c true");
    let (busy0, own0) = (harness::machine_busy(), harness::own_cpu());
    let children0 = harness::children_cpu();
    let began = Instant::now();
    let raw = raw_spawn_rate(parallelism, RUNS as usize);
    // What one `/bin/sh -c true` costs itself (the child side of a spawn): the job's share of
    // a run, against which the shims' share is told apart below.
    let shell = (harness::children_cpu() - children0) / RUNS as u32;
    let others = (harness::machine_busy() - busy0).saturating_sub(harness::own_cpu() - own0);
    let raw_others_pct = round(
        others.as_secs_f64() / began.elapsed().as_secs_f64() * 100.0,
        0,
    );
    progress("throughput: sisy end to end");
    let sisy = end_to_end(cluster, shell).await?;
    let rate = sisy["runs_per_s"].as_f64().unwrap_or(0.0);
    let ratio = rate / raw;
    Ok(json!({
        "guardians": GUARDIANS,
        "capacity_per_guardian": CAPACITY,
        "parallelism": parallelism,
        "runs": RUNS,
        "raw_spawn_per_s": round(raw, 0),
        "raw_shell_cpu_us": round(shell.as_secs_f64() * 1e6, 0),
        "raw_other_processes_cpu_pct": raw_others_pct,
        "sisy": sisy,
        "ratio": round(ratio, 3),
        "ratio_target": target(ratio, 0.6, false, "at least 60 % of the raw spawn rate"),
    }))
}

/// `/bin/sh -c true`, spawned and reaped `total` times by `parallelism` threads.
fn raw_spawn_rate(parallelism: usize, total: usize) -> f64 {
    let left = Arc::new(AtomicUsize::new(total));
    let began = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallelism {
            let left = left.clone();
            s.spawn(move || {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let status = Command::new("/bin/sh")
                        .args(["-c", "true"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    assert!(status.is_ok_and(|s| s.success()), "/bin/sh -c true failed");
                }
            });
        }
    });
    total as f64 / began.elapsed().as_secs_f64()
}

/// `shell`: the CPU of one `/bin/sh -c true` of the raw measurement (the job's own share).
async fn end_to_end(cluster: &Cluster, shell: Duration) -> Result<Value> {
    let db = cluster.database().await?;
    let guardians = harness::fleet(
        &db,
        GUARDIANS,
        &format!("{PRODUCTION}capacity = {CAPACITY}\n"),
    )
    .await;
    let pids: Vec<i32> = guardians.iter().filter_map(Guardian::pid).collect();
    db.client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('t', 'true', 'allow')",
        )
        .await?;
    let stat = |pids: &[i32]| {
        pids.iter()
            .filter_map(|p| harness::proc_stat(*p))
            .fold((Duration::ZERO, Duration::ZERO), |(a, b), s| {
                (a + s.cpu, b + s.children_cpu)
            })
    };
    cluster.reset_statements(&db).await?;
    let (g0, jobs0) = stat(&pids);
    let pg0 = cluster.postgres_cpu();
    let (busy0, own0) = (harness::machine_busy(), harness::own_cpu());
    let window = Instant::now();
    // One row per run, as sisy.trigger inserts it; distinct instants keep the occurrence key
    // unique.
    db.client
        .execute(
            "INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline)
             SELECT j.id, j.name, j.pool, now() + i * interval '1 microsecond', 'manual',
                    now(), now() + interval '10 minutes'
               FROM sisy.jobs j, generate_series(1, $1::bigint) i WHERE j.name = 't'",
            &[&RUNS],
        )
        .await?;
    harness::wait_for(
        &db.client,
        "every run to be recorded",
        &format!(
            "SELECT count(*) = {RUNS} FROM sisy.runs WHERE job_name = 't' AND finished_at IS NOT NULL"
        ),
        Duration::from_millis(100),
        Duration::from_secs(300),
    )
    .await?;
    let (g1, jobs1) = stat(&pids);
    // The spawners start at the first run and their shims after, so all of theirs is in the
    // window: the spawners' own CPU (handing runs over), the shims' own (supervising them)
    // and the job shells' (reaped by the shims); shims let go meanwhile are in their
    // spawner's reaped children.
    let spawners = harness::spawners_of(&pids);
    let (spawner, gone_shims) = stat(&spawners);
    let (shims, shells) = stat(&harness::children_of(&spawners));
    let pg = cluster.postgres_cpu() - pg0;
    let ours = (g1 - g0)
        + (jobs1 - jobs0)
        + spawner
        + gone_shims
        + shims
        + shells
        + pg
        + (harness::own_cpu() - own0);
    let others = (harness::machine_busy() - busy0).saturating_sub(ours);
    let others_pct = round(
        others.as_secs_f64() / window.elapsed().as_secs_f64() * 100.0,
        0,
    );
    let statements = cluster.statements(&db).await?;
    let row = db
        .client
        .query_one(
            "SELECT extract(epoch FROM max(finished_at) - min(created_at))::float8,
                    count(*) FILTER (WHERE state = 'succeeded'),
                    extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY finished_at)
                                     - percentile_disc(0.1) WITHIN GROUP (ORDER BY finished_at))::float8
               FROM sisy.runs WHERE job_name = 't'",
            &[],
        )
        .await?;
    let (span, succeeded, middle): (f64, i64, f64) = (row.get(0), row.get(1), row.get(2));
    let per_run_us = |d: Duration| round(d.as_secs_f64() * 1e6 / RUNS as f64, 0);
    Ok(json!({
        "runs_per_s": round(RUNS as f64 / span, 0),
        "runs_per_s_middle_80pct": round(0.8 * RUNS as f64 / middle, 0),
        "succeeded": succeeded,
        "drain_s": round(span, 2),
        "cpu_us_per_run": {
            "guardians": per_run_us(g1 - g0),
            "spawners": per_run_us(spawner),
            // The guardians' other reaped children (none unless a spawner was restarted).
            "guardians_children": per_run_us(jobs1 - jobs0),
            "shims": per_run_us(shims + gone_shims),
            "job_shells": per_run_us(shells),
            "job_shell_as_raw": per_run_us(shell * RUNS as u32),
            "postgres": per_run_us(pg),
            "total": per_run_us(ours - (harness::own_cpu() - own0)),
        },
        "other_processes_cpu_pct": others_pct,
        "statements_per_run": round(statements.total().calls as f64 / RUNS as f64, 2),
        "statements": statements.to_json(),
    }))
}

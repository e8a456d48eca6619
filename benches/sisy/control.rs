//! Scenario 5, control latency: `sisy.kill` until the job's process is gone (and until
//! `killed` is recorded), and a host's lease expiry until its run is recorded `lost`.
//!
//! Kill: a job that writes its pid to a file and execs `sleep`; the clock runs from just
//! before `SELECT sisy.kill(id)` until /proc says the process is gone (polled every 0.2 ms).
//! Lease: the guardian running such a job is frozen with SIGSTOP (a paused or cut-off host);
//! the figure is `finished_at` of the `lost` run minus the frozen host's `lease_until`, both
//! from the database clock; and when the frozen guardian's job died, relative to that lease
//! expiry (its run shim's watchdog kills it first). Then SIGCONT. Guardians here beat every
//! second with a 3 s lease, so that the scenario takes seconds; the bound scales with
//! `heartbeat_interval` (see BENCHMARKS.md).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::harness::{self, Cluster, Db, distribution, progress, round};
use crate::util::{self, Guardian, process_gone};

const KILLS: usize = 10;
const LEASES: usize = 3;
const GUARDIANS: &str = "heartbeat_interval = \"1s\"\nlease = \"3s\"\n";

pub async fn run(cluster: &Cluster) -> Result<Value> {
    let db = cluster.database().await?;
    let dir = util::shared_dir();
    let command = format!(
        "echo $$ > {}/$SISY_RUN_ID.tmp && mv {0}/$SISY_RUN_ID.tmp {0}/$SISY_RUN_ID && exec sleep 600",
        dir.path().display()
    );
    db.client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap, kill_grace) VALUES ('sleeper', $1, 'allow', '1 second')",
            &[&command],
        )
        .await?;
    let guardians = harness::fleet(&db, 2, GUARDIANS).await;

    progress("control: sisy.kill");
    let (mut gone, mut recorded) = (Vec::new(), Vec::new());
    for _ in 0..KILLS {
        let (id, pid) = start_sleeper(&db, dir.path()).await?;
        let began = Instant::now();
        db.client.execute("SELECT sisy.kill($1)", &[&id]).await?;
        let t = wait_gone(pid, Duration::from_secs(10))?;
        gone.push(t.as_secs_f64() * 1000.0);
        wait_state(&db, id, "killed").await?;
        recorded.push(began.elapsed().as_secs_f64() * 1000.0);
    }

    progress("control: lease expiry");
    let (mut lost, mut watchdog) = (Vec::new(), Vec::new());
    for _ in 0..LEASES {
        let (id, pid) = start_sleeper(&db, dir.path()).await?;
        let host: String = db
            .client
            .query_one("SELECT host FROM sisy.runs WHERE id = $1", &[&id])
            .await?
            .get(0);
        let frozen = guardian(&guardians, &host)?;
        let stopped = Instant::now();
        frozen.signal(Signal::SIGSTOP);
        // The run shim's watchdog kills the job of a paused guardian before its lease lapses.
        let watcher = tokio::task::spawn_blocking(move || {
            wait_gone(pid, Duration::from_secs(60)).map(|_| stopped.elapsed())
        });
        let at_stop: chrono::DateTime<chrono::Utc> =
            db.client.query_one("SELECT now()", &[]).await?.get(0);
        // A heartbeat already on its way when the signal landed may still renew the lease.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lease_until: chrono::DateTime<chrono::Utc> = db
            .client
            .query_one(
                "SELECT lease_until FROM sisy.hosts WHERE name = $1",
                &[&host],
            )
            .await?
            .get(0);
        wait_state(&db, id, "lost").await?;
        let finished: chrono::DateTime<chrono::Utc> = db
            .client
            .query_one("SELECT finished_at FROM sisy.runs WHERE id = $1", &[&id])
            .await?
            .get(0);
        lost.push((finished - lease_until).as_seconds_f64() * 1000.0);
        let gone = watcher.await??.as_secs_f64() * 1000.0;
        let lease_left = (lease_until - at_stop).as_seconds_f64() * 1000.0;
        watchdog.push(gone - lease_left);
        frozen.signal(Signal::SIGCONT);
        harness::wait_for(
            &db.client,
            "the thawed guardian to renew its lease",
            &format!("SELECT lease_until > now() + interval '2 seconds' FROM sisy.hosts WHERE name = '{host}'"),
            Duration::from_millis(50),
            Duration::from_secs(30),
        )
        .await?;
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Ok(json!({
        "guardians": 2,
        "guardian_config": "heartbeat_interval 1s, lease 3s",
        "kill_to_process_gone": distribution(gone.clone()),
        "kill_to_killed_recorded": distribution(recorded),
        "lease_expiry_to_lost_recorded": distribution(lost.clone()),
        "lost_bound": "<= heartbeat_interval after lease expiry (a live guardian's next beat declares it)",
        "job_gone_relative_to_lease_expiry": distribution(watchdog),
        "job_gone_note": "negative: the paused guardian's job was killed (by its run shim's watchdog) that long before the lease expired",
        "kill_max_ms": round(max(&gone), 1),
        "lease_max_ms": round(max(&lost), 1),
    }))
}

/// Triggers the sleeper and waits for its pid file; returns the run id and the pid.
async fn start_sleeper(db: &Db, dir: &Path) -> Result<(i64, i32)> {
    let id: i64 = db
        .client
        .query_one("SELECT sisy.trigger('sleeper')", &[])
        .await?
        .get(0);
    let file = dir.join(id.to_string());
    let began = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok((id, pid));
        }
        if began.elapsed() > Duration::from_secs(10) {
            bail!("run {id} did not start within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls /proc until `pid` is gone; returns how long that took.
fn wait_gone(pid: i32, timeout: Duration) -> Result<Duration> {
    let began = Instant::now();
    while !process_gone(pid) {
        if began.elapsed() > timeout {
            bail!("process {pid} still there after {timeout:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(began.elapsed())
}

async fn wait_state(db: &Db, id: i64, state: &str) -> Result<()> {
    harness::wait_for(
        &db.client,
        &format!("run {id} to be {state}"),
        &format!("SELECT state = '{state}' FROM sisy.runs WHERE id = {id}"),
        Duration::from_millis(1),
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

/// The guardian named `host` (the fleet is g1..gn).
fn guardian<'a>(guardians: &'a [Guardian], host: &str) -> Result<&'a Guardian> {
    let index: usize = host.trim_start_matches('g').parse()?;
    guardians
        .get(index.wrapping_sub(1))
        .ok_or_else(|| anyhow::anyhow!("no guardian process for host {host}"))
}

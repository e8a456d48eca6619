//! Scenario 8, fleet: N guardians against one PostgreSQL through PgBouncer in transaction
//! pooling mode (`listen = false`, `prepared_statements = false`), and directly with LISTEN
//! for comparison: what the database pays per run as the fleet grows.
//!
//! The guardians are the real guardian code, run by the hidden `sisy __fleet` subcommand
//! ([`PROCESSES`] processes at most, each running its share of the N as tasks: one host
//! name, state directory and set of connections per guardian), shipped defaults (5 s
//! heartbeat, 30 s lease, `poll_interval` 1 s, `pool_size` 6, capacity 16), jobs `true` run
//! as `nobody`. Per N, on a fresh database and a fresh PgBouncer (`max_client_conn` for
//! every guardian's `pool_size + 1` connections, [`SERVER_CONNECTIONS`] server connections):
//! - [`POOLS`] pools (fewer when N is smaller, so that every pool is served); guardian i
//!   serves pool i mod pools;
//! - idle: the fleet up, nothing due, for [`IDLE`];
//! - load: 1,200 jobs `S * * * * *` (job j at second j mod 60) with a 1 s jitter, so 20
//!   occurrences every second spread over it, each pool's share alike, plus one
//!   `target = 'all'` job per pool each minute (pool p at its own second); one window of
//!   [`WINDOW`] after a warm-up;
//! - during the load: manual triggers (`sisy.trigger` until `started_at`), kills
//!   (`sisy.kill` until the job's process is gone, from /proc), a lease expiry (one extra
//!   real `sisy guardian` holding a running job is SIGKILLed; `lost` recorded after its
//!   `lease_until`), then a burst of 1,000 runs triggered in one statement.
//!
//! Database CPU is every PostgreSQL process's (the postmaster, its children and the
//! children it reaped), from /proc; per run it is the load window's minus the idle rate
//! over the same time, and the raw total too. `pg_stat_statements` gives the database time
//! per heartbeat. Backends are sampled from `pg_stat_activity` twice a second.
//!
//! N comes from `SISY_BENCH_FLEET_N` (default 2,100,300,1000), the direct comparison's from
//! `SISY_BENCH_FLEET_DIRECT` (default 50; empty: none), the guardians' `poll_interval` from
//! `SISY_BENCH_FLEET_POLL_MS` (default 1000). A size that fails (the fleet does
//! not come up in time, the machine gives out) is a figure (`error`), not the end of the
//! scenario.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bouncer::Bouncer;
use crate::harness::{self, Cluster, Db, PRODUCTION, distribution, progress, round, target};
use crate::pg::{self, TestDb};
use crate::util::{self, Guardian, process_gone};

const POOLS: usize = 50;
/// Job j fires at second j mod 60 of every minute: 20 a second.
const TICK_JOBS: usize = 1200;
const BURST: usize = 1000;
const PROCESSES: usize = 4;
/// PgBouncer's server connections (`default_pool_size`): the backends stay below 100.
const SERVER_CONNECTIONS: usize = 50;
/// The guardians' `pool_size` (the shipped default): each has it + 1 connections.
const POOL_SIZE: usize = 6;
const SETTLE: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(20);
const WARMUP: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(60);
const TRIGGERS: usize = 5;
const KILLS: usize = 5;
/// The guardians' `poll_interval` in ms: `SISY_BENCH_FLEET_POLL_MS`, default 1,000 (the
/// shipped default). Another value shows what the polls cost the rest.
fn poll_interval_ms() -> f64 {
    std::env::var("SISY_BENCH_FLEET_POLL_MS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 100.0)
        .unwrap_or(1000.0)
}
const HEARTBEAT_MS: f64 = 5000.0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Through PgBouncer, `listen = false`, unnamed statements.
    Pooled,
    /// Straight to PostgreSQL, LISTEN, named prepared statements.
    Direct,
}

pub async fn run(cluster: &Cluster) -> Result<Value> {
    // PgBouncer inherits it: thousands of client connections need as many descriptors.
    raise_open_files_limit();
    let sizes = sizes("SISY_BENCH_FLEET_N", "2,100,300,1000")?;
    let direct = sizes_or_none("SISY_BENCH_FLEET_DIRECT", "50")?;
    let mut pooled = Vec::new();
    for &n in &sizes {
        progress(&format!("fleet: {n} guardians through PgBouncer"));
        pooled.push(or_error(n, measure(cluster, n, Mode::Pooled).await));
    }
    let mut direct_figures = Vec::new();
    for &n in &direct {
        progress(&format!(
            "fleet: {n} guardians, direct connections with LISTEN"
        ));
        direct_figures.push(or_error(n, measure(cluster, n, Mode::Direct).await));
    }
    let at = |n: usize, path: &[&str]| {
        pooled
            .iter()
            .find(|f| f["guardians"] == json!(n))
            .and_then(|f| path.iter().try_fold(f, |v, k| v.get(k)))
            .and_then(Value::as_f64)
    };
    let largest = *sizes.iter().max().unwrap_or(&0);
    let per_run = ["load", "db_cpu_ms_per_run"];
    let per_beat = ["load", "heartbeat_ms"];
    let mut comparison = json!({"largest_n": largest});
    if let (true, Some(small), Some(large)) = (largest > 2, at(2, &per_run), at(largest, &per_run))
    {
        let r = round(large / small.max(1e-9), 2);
        comparison["db_cpu_per_run_largest_over_n2"] = json!(r);
        comparison["db_cpu_per_run"] = if small > 0.0 && large > 0.0 {
            target(r, 1.5, true, "at N = 1,000 within 1.5x of N = 2")
        } else {
            // PostgreSQL got less CPU under load than idle: a saturated machine.
            json!({"target": "at N = 1,000 within 1.5x of N = 2", "met": null,
                   "note": "not measurable: PostgreSQL used less CPU under load than idle (the machine was saturated)"})
        };
    }
    let raw = ["load", "db_cpu_ms_per_run_raw"];
    if let (true, Some(small), Some(large)) = (largest > 2, at(2, &raw), at(largest, &raw)) {
        comparison["db_cpu_per_run_raw_largest_over_n2"] = json!(round(large / small.max(1e-9), 2));
    }
    if let (true, Some(hundred), Some(large)) =
        (largest > 100, at(100, &per_beat), at(largest, &per_beat))
    {
        let r = round(large / hundred.max(1e-9), 2);
        comparison["heartbeat_ms_largest_over_n100"] = json!(r);
        comparison["heartbeat"] = target(r, 1.2, true, "at N = 1,000 within 1.2x of N = 100");
    }
    Ok(json!({
        "setup": {
            "pools": format!("{POOLS} (min(N, {POOLS}) when N is smaller); guardian i serves pool i mod pools"),
            "load": format!("{TICK_JOBS} jobs `S * * * * *` (job j at second j mod 60) with jitter 1 s: 20 occurrences/s spread over each second; one target = 'all' job per pool each minute"),
            "guardians": format!("sisy __fleet, at most {PROCESSES} processes; heartbeat 5 s, lease 30 s, poll_interval {} ms, pool_size {POOL_SIZE}, capacity 16", poll_interval_ms()),
            "pgbouncer": format!("pool_mode transaction, default_pool_size {SERVER_CONNECTIONS}, max_client_conn N x (pool_size + 1) + 100"),
            "windows": format!("settle {}s, idle {}s, warm-up {}s, load {}s", SETTLE.as_secs(), IDLE.as_secs(), WARMUP.as_secs(), WINDOW.as_secs()),
        },
        "pooled": pooled,
        "direct_listen": direct_figures,
        "comparison": comparison,
    }))
}

/// A phase's figures, or its error as a figure.
fn phase(name: &str, measured: Result<Value>) -> Value {
    measured.unwrap_or_else(|e| {
        progress(&format!("fleet: {name} failed: {e:#}"));
        json!({"error": format!("{e:#}")})
    })
}

fn or_error(n: usize, measured: Result<Value>) -> Value {
    measured.unwrap_or_else(|e| {
        progress(&format!("fleet: N = {n} failed: {e:#}"));
        json!({"guardians": n, "error": format!("{e:#}")})
    })
}

fn sizes(var: &str, default: &str) -> Result<Vec<usize>> {
    let v = sizes_or_none(var, default)?;
    if v.is_empty() {
        bail!("{var} is empty: give fleet sizes, e.g. {var}=2,100");
    }
    Ok(v)
}

fn sizes_or_none(var: &str, default: &str) -> Result<Vec<usize>> {
    let text = std::env::var(var).unwrap_or_else(|_| default.to_string());
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => {
                bail!("{var}: {s:?} is not a fleet size: give positive integers, e.g. {var}=2,100")
            }
        })
        .collect()
}

/// One fleet of `n`: set up, idle window, load window, controls, burst, stop.
async fn measure(cluster: &Cluster, n: usize, mode: Mode) -> Result<Value> {
    let db = cluster.database().await?;
    let pools = n.min(POOLS);
    let shared = util::shared_dir();
    setup_jobs(&db, pools, shared.path()).await?;
    let bouncer = match mode {
        Mode::Pooled => Some(Bouncer::start(
            cluster.server(),
            &db.test.name,
            n * (POOL_SIZE + 1) + 100,
            SERVER_CONNECTIONS,
        )?),
        Mode::Direct => None,
    };
    let url = bouncer
        .as_ref()
        .map_or(db.test.url.clone(), |b| b.url(&db.test.name));
    let mut fleet = Fleet::start(&url, n, pools, mode)?;
    let began = Instant::now();
    fleet.wait_live(&db, n).await?;
    let startup_s = began.elapsed().as_secs_f64();
    progress(&format!("fleet: {n} live after {startup_s:.1} s"));
    let sampler = Sampler::start(cluster, db.oid).await?;
    tokio::time::sleep(SETTLE).await;

    let bouncer_pid = bouncer.as_ref().map(Bouncer::pid);
    let meter = || Meter::read(cluster, bouncer_pid, &fleet.pids());
    progress(&format!("fleet: idle {} s", IDLE.as_secs()));
    sampler.reset();
    let idle0 = meter();
    tokio::time::sleep(IDLE).await;
    let idle = meter().since(&idle0);
    let idle_backends = sampler.max();

    progress(&format!(
        "fleet: load, warm-up {} s and window {} s",
        WARMUP.as_secs(),
        WINDOW.as_secs()
    ));
    start_load(&db, pools).await?;
    tokio::time::sleep(WARMUP).await;
    sampler.reset();
    cluster.reset_statements(&db).await?;
    let load0 = meter();
    let start: Instant_ = db.client.query_one("SELECT now()", &[]).await?.get(0);
    tokio::time::sleep(WINDOW).await;
    let end: Instant_ = db.client.query_one("SELECT now()", &[]).await?.get(0);
    let load = meter().since(&load0);
    let stats = cluster.statements(&db).await?;
    let load_backends = sampler.max();
    // The last second's occurrences get their moment to start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE started_at >= $1 AND started_at < $2",
            &[&start, &end],
        )
        .await?
        .get(0);
    let scheduled = latencies(&db, "tick-%", start, end).await?;
    let all = latencies(&db, "all-%", start, end).await?;
    let not_started: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE reason = 'schedule'
                AND due_at >= $1 AND due_at < $2 AND started_at IS NULL",
            &[&start, &end],
        )
        .await?
        .get(0);

    // Each phase that fails (a saturated machine) is a figure; the next one still runs.
    progress("fleet: triggers and kills");
    let triggers = phase("triggers", triggers(&db).await);
    let kills = phase("kills", kills(&db, shared.path()).await);
    progress("fleet: lease expiry");
    let lease = phase(
        "lease expiry",
        lease_expiry(&db, &url, mode, shared.path()).await,
    );
    progress("fleet: burst");
    let burst = phase("burst", burst(&db).await);
    let burst_backends = sampler.max();
    sampler.stop();
    progress("fleet: stopping");
    let processes = fleet.children.len();
    let stopped = fleet.stop().await;
    drop(bouncer);

    let secs = (end - start).as_seconds_f64();
    let idle_secs = idle.wall.as_secs_f64();
    let pg_idle_rate = idle.pg.as_secs_f64() / idle_secs;
    let runs_f = runs.max(1) as f64;
    let pg_load = load.pg.as_secs_f64();
    let pg_net = pg_load - pg_idle_rate * load.wall.as_secs_f64();
    let cores = |cpu: Duration, wall: Duration| round(cpu.as_secs_f64() / wall.as_secs_f64(), 3);
    let pg_and_bouncer = cores(load.pg + load.bouncer, load.wall);
    let beats = stats.get("heartbeat");
    let p99 = scheduled["p99_ms"].as_f64().unwrap_or(f64::MAX);
    let total = stats.total();
    Ok(json!({
        "guardians": n,
        "mode": match mode { Mode::Pooled => "PgBouncer transaction mode, listen = false, prepared_statements = false", Mode::Direct => "direct, listen = true, prepared statements" },
        "pools": pools,
        "fleet_processes": processes,
        "startup_s": round(startup_s, 1),
        "idle": {
            "postgres_cores": cores(idle.pg, idle.wall),
            "pgbouncer_cores": cores(idle.bouncer, idle.wall),
            "fleet_cores": cores(idle.fleet, idle.wall),
            "machine_busy_cores": cores(idle.machine, idle.wall),
            "backends_max": idle_backends,
        },
        "load": {
            "window_s": round(secs, 1),
            "runs_started": runs,
            "runs_per_s": round(runs as f64 / secs, 1),
            "postgres_cores": cores(load.pg, load.wall),
            "pgbouncer_cores": cores(load.bouncer, load.wall),
            "postgres_and_pgbouncer_cores": pg_and_bouncer,
            "postgres_and_pgbouncer": target(pg_and_bouncer, 1.0, true, "<= 1 core"),
            "fleet_cores": cores(load.fleet, load.wall),
            "machine_busy_cores": cores(load.machine, load.wall),
            "db_cpu_ms_per_run": round(pg_net * 1000.0 / runs_f, 3),
            "db_cpu_ms_per_run_raw": round(pg_load * 1000.0 / runs_f, 3),
            "backends_max": load_backends,
            "backends": target(load_backends.max(burst_backends) as f64, 100.0, true, "<= 100 server backends (load and burst)"),
            "heartbeats": beats.calls,
            "heartbeat_ms": round(beats.ms / beats.calls.max(1) as f64, 4),
            "statements_per_run": round(total.calls as f64 / runs_f, 1),
            "db_exec_ms_per_run": round(total.ms / runs_f, 3),
            "statements": stats.to_json(),
        },
        "dispatch_latency": scheduled,
        "dispatch_p99": target(p99, 50.0, true, "p99 <= 50 ms"),
        "target_all_latency": all,
        "scheduled_not_started": not_started,
        "trigger_to_start": triggers,
        "kill_to_gone": kills,
        "lease_expiry_to_lost": lease,
        "burst": burst,
        "burst_backends_max": burst_backends,
        "fleet_stop": stopped,
    }))
}

/// A database-clock instant.
type Instant_ = chrono::DateTime<chrono::Utc>;

/// The dormant jobs every size has from the start: the burst's, the trigger's, the kills'.
async fn setup_jobs(db: &Db, pools: usize, shared: &Path) -> Result<()> {
    let sleeper = format!(
        "echo $$ > {}/$SISY_RUN_ID.tmp && mv {0}/$SISY_RUN_ID.tmp {0}/$SISY_RUN_ID && exec sleep 600",
        shared.display()
    );
    db.client
        .execute(
            "INSERT INTO sisy.jobs (name, command, pool)
             SELECT format('burst-%s', i), 'true', format('p%s', i % $2::int)
               FROM generate_series(0, $1::int - 1) i",
            &[&(BURST as i32), &(pools as i32)],
        )
        .await?;
    db.client
        .execute(
            "INSERT INTO sisy.jobs (name, command, pool, overlap, kill_grace) VALUES
               ('trigger', 'true', 'p0', 'allow', '1 second'),
               ('sleeper', $1, 'p0', 'allow', '1 second'),
               ('victim', $1, 'victim', 'allow', '1 second')",
            &[&sleeper],
        )
        .await?;
    Ok(())
}

/// The steady load: 20 occurrences a second, and the per-pool `target = 'all'` jobs.
async fn start_load(db: &Db, pools: usize) -> Result<()> {
    db.client
        .execute(
            "INSERT INTO sisy.jobs (name, command, pool, schedule, jitter)
             SELECT format('tick-%s', j), 'true', format('p%s', j % $2::int),
                    format('%s * * * * *', j % 60), interval '1 second'
               FROM generate_series(0, $1::int - 1) j",
            &[&(TICK_JOBS as i32), &(pools as i32)],
        )
        .await?;
    db.client
        .execute(
            "INSERT INTO sisy.jobs (name, command, pool, schedule, target)
             SELECT format('all-%s', p), 'true', format('p%s', p),
                    format('%s * * * * *', p * 60 / $1::int), 'all'
               FROM generate_series(0, $1::int - 1) p",
            &[&(pools as i32)],
        )
        .await?;
    Ok(())
}

/// `started_at − due_at` of the runs of jobs `like` due in the window.
async fn latencies(db: &Db, like: &str, start: Instant_, end: Instant_) -> Result<Value> {
    let rows = db
        .client
        .query(
            "SELECT extract(epoch FROM started_at - due_at)::float8 * 1000,
                    extract(epoch FROM created_at - due_at)::float8 * 1000,
                    extract(epoch FROM claimed_at - greatest(created_at, due_at))::float8 * 1000,
                    extract(epoch FROM started_at - claimed_at)::float8 * 1000
               FROM sisy.runs
              WHERE job_name LIKE $1 AND due_at >= $2 AND due_at < $3 AND started_at IS NOT NULL",
            &[&like, &start, &end],
        )
        .await?;
    let column = |i: usize| distribution(rows.iter().map(|r| r.get(i)).collect());
    let mut all = column(0);
    // Where the time goes: due → row inserted (the pool's lease holder materialising it; the
    // transaction's start, so before its commit), → claimed, → admitted.
    all["stages"] = json!({
        "due_to_materialised": column(1),
        "materialised_to_claimed": column(2),
        "claimed_to_started": column(3),
    });
    Ok(all)
}

/// `sisy.trigger` until the run's `started_at` (database clock).
async fn triggers(db: &Db) -> Result<Value> {
    let mut ms = Vec::new();
    for _ in 0..TRIGGERS {
        let id: i64 = db
            .client
            .query_one("SELECT sisy.trigger('trigger')", &[])
            .await?
            .get(0);
        harness::wait_for(
            &db.client,
            "a triggered run to start",
            &format!("SELECT started_at IS NOT NULL FROM sisy.runs WHERE id = {id}"),
            Duration::from_millis(10),
            Duration::from_secs(30),
        )
        .await?;
        let t: f64 = db
            .client
            .query_one(
                "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 FROM sisy.runs WHERE id = $1",
                &[&id],
            )
            .await?
            .get(0);
        ms.push(t);
        // Not in step with the guardians' polls.
        tokio::time::sleep(Duration::from_millis(333)).await;
    }
    Ok(bounded(ms))
}

/// `sisy.kill` of a running sleeper until its process is gone (/proc).
async fn kills(db: &Db, shared: &Path) -> Result<Value> {
    let mut ms = Vec::new();
    for _ in 0..KILLS {
        let (id, pid) = start_sleeper(db, "sleeper", shared).await?;
        db.client.execute("SELECT sisy.kill($1)", &[&id]).await?;
        let t =
            tokio::task::spawn_blocking(move || wait_gone(pid, Duration::from_secs(30))).await??;
        ms.push(t.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(333)).await;
    }
    Ok(bounded(ms))
}

/// Latencies against the poll bound.
fn bounded(ms: Vec<f64>) -> Value {
    let max = ms.iter().copied().fold(0.0, f64::max);
    json!({
        "latency": distribution(ms),
        "bound": target(max, poll_interval_ms() + 100.0, true, "<= poll_interval + 100 ms (max)"),
    })
}

/// One extra real `sisy guardian` (heartbeat 1 s, lease 3 s) runs a sleeper of pool
/// `victim` and is SIGKILLed; the fleet (heartbeat 5 s) declares the run `lost`. The figure
/// is `finished_at − lease_until` of the dead host, database clock.
async fn lease_expiry(db: &Db, url: &str, mode: Mode, shared: &Path) -> Result<Value> {
    let extra = match mode {
        Mode::Pooled => "pools = [\"victim\"]\nlisten = false\nprepared_statements = false\n",
        Mode::Direct => "pools = [\"victim\"]\n",
    };
    let target_db = TestDb {
        name: db.test.name.clone(),
        url: url.to_string(),
    };
    let mut victim = Guardian::start(&target_db, "victim", extra);
    let (id, _pid) = start_sleeper(db, "victim", shared).await?;
    victim.kill();
    let lease_until: Instant_ = db
        .client
        .query_one(
            "SELECT lease_until FROM sisy.hosts WHERE name = 'victim'",
            &[],
        )
        .await?
        .get(0);
    harness::wait_for(
        &db.client,
        "the dead host's run to be lost",
        &format!("SELECT state = 'lost' FROM sisy.runs WHERE id = {id}"),
        Duration::from_millis(20),
        Duration::from_secs(90),
    )
    .await?;
    let finished: Instant_ = db
        .client
        .query_one("SELECT finished_at FROM sisy.runs WHERE id = $1", &[&id])
        .await?
        .get(0);
    let ms = (finished - lease_until).as_seconds_f64() * 1000.0;
    Ok(json!({
        "ms": round(ms, 1),
        "bound": target(ms, HEARTBEAT_MS, true, "<= one heartbeat interval (5 s) after lease expiry"),
        "dead_host": "an extra sisy guardian, heartbeat 1 s, lease 3 s, SIGKILLed with a running job",
    }))
}

/// 1,000 runs triggered in one statement: until every one started.
async fn burst(db: &Db) -> Result<Value> {
    let t0: Instant_ = db
        .client
        .query_one(
            "SELECT now(), count(sisy.trigger(name)) FROM sisy.jobs WHERE name LIKE 'burst-%'",
            &[],
        )
        .await?
        .get(0);
    let sql = format!(
        "SELECT count(*) = {BURST} FROM sisy.runs WHERE job_name LIKE 'burst-%' AND started_at IS NOT NULL"
    );
    let waited = harness::wait_for(
        &db.client,
        "the burst to start",
        &sql,
        Duration::from_millis(100),
        Duration::from_secs(180),
    )
    .await;
    let row = db
        .client
        .query_one(
            "SELECT count(started_at), extract(epoch FROM max(started_at) - $1)::float8 * 1000
               FROM sisy.runs WHERE job_name LIKE 'burst-%'",
            &[&t0],
        )
        .await?;
    let rows = db
        .client
        .query(
            "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 FROM sisy.runs
              WHERE job_name LIKE 'burst-%' AND started_at IS NOT NULL",
            &[],
        )
        .await?;
    Ok(json!({
        "runs": BURST,
        "started": row.get::<_, i64>(0),
        "all_started_after_ms": row.get::<_, Option<f64>>(1).map(|v| round(v, 1)),
        "timed_out": waited.is_err(),
        "trigger_to_start": distribution(rows.iter().map(|r| r.get(0)).collect()),
    }))
}

/// Triggers `job` (a sleeper) and waits for its pid file; the run id and the pid.
async fn start_sleeper(db: &Db, job: &str, dir: &Path) -> Result<(i64, i32)> {
    let id: i64 = db
        .client
        .query_one("SELECT sisy.trigger($1)", &[&job])
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
        if began.elapsed() > Duration::from_secs(30) {
            bail!("run {id} of {job} did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

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

/// The `sisy __fleet` processes of one size.
struct Fleet {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn start(url: &str, n: usize, pools: usize, mode: Mode) -> Result<Fleet> {
        let dir = tempfile::Builder::new().prefix("sisy-fleet-").tempdir()?;
        let config = dir.path().join("guardian.toml");
        let pooled = match mode {
            Mode::Pooled => "listen = false\nprepared_statements = false\n",
            Mode::Direct => "listen = true\n",
        };
        std::fs::write(
            &config,
            format!(
                "database_url = {url:?}\nhost_name = \"fleet\"\nstate_dir = {state:?}\n{PRODUCTION}{pooled}pool_size = {POOL_SIZE}\npoll_interval = \"{poll}ms\"\n",
                state = dir.path().join("state").display().to_string(),
                poll = poll_interval_ms(),
            ),
        )?;
        let names: Vec<String> = (0..pools).map(|p| format!("p{p}")).collect();
        let processes = n.min(PROCESSES);
        let mut children = Vec::new();
        let mut first = 0;
        for k in 0..processes {
            let count = n / processes + usize::from(k < n % processes);
            let log = std::fs::File::create(dir.path().join(format!("fleet-{k}.log")))?;
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_sisy"));
            cmd.args(["__fleet", "--config"])
                .arg(&config)
                .args(["--count", &count.to_string(), "--first", &first.to_string()])
                .args(["--pools", &names.join(",")])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // The fleet dies with the benchmark.
            // SAFETY: runs between fork and exec; prctl only.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            children.push(pg::spawn_from_long_lived_thread(cmd).context("start sisy __fleet")?);
            first += count;
        }
        Ok(Fleet { children, dir })
    }

    fn pids(&self) -> Vec<i32> {
        self.children.iter().map(|c| c.id() as i32).collect()
    }

    /// Until `n` hosts hold a live lease; an error with the logs' tails when a process
    /// ended or the deadline passed.
    async fn wait_live(&mut self, db: &Db, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60 + n as u64 / 5);
        loop {
            let live: i64 = db
                .client
                .query_one(
                    "SELECT count(*) FROM sisy.hosts WHERE name LIKE 'fleet-%' AND lease_until > now()",
                    &[],
                )
                .await?
                .get(0);
            if live as usize >= n {
                return Ok(());
            }
            let ended = self
                .children
                .iter_mut()
                .any(|c| matches!(c.try_wait(), Ok(Some(_))));
            if ended || Instant::now() > deadline {
                bail!(
                    "{live} of {n} guardians live{}\n{}",
                    if ended {
                        ", a fleet process ended"
                    } else {
                        " at the deadline"
                    },
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn log_tails(&self) -> String {
        (0..self.children.len())
            .map(|k| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("fleet-{k}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- fleet-{k}.log ---\n{}",
                    lines[lines.len().saturating_sub(10)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM to every process, then waits for each (SIGKILL after 90 s); how long it
    /// took and the exit codes.
    async fn stop(&mut self) -> Value {
        let began = Instant::now();
        for c in &self.children {
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let mut codes = Vec::new();
        for mut c in std::mem::take(&mut self.children) {
            let status = tokio::task::spawn_blocking(move || {
                let status = pg::wait_for_exit(&mut c, Duration::from_secs(90));
                if status.is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                status
            })
            .await
            .ok()
            .flatten();
            codes.push(status.and_then(|s| s.code()));
        }
        json!({"seconds": round(began.elapsed().as_secs_f64(), 1), "exit_codes": codes})
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Each guardian's room of result files in the temporary directory.
        let state = self.dir.path().join("state");
        for entry in std::fs::read_dir(&state).into_iter().flatten().flatten() {
            if let Ok(room) = std::fs::read_to_string(entry.path().join("results-room")) {
                let _ = std::fs::remove_dir_all(room.trim());
            }
        }
    }
}

/// CPU times at one instant.
struct Meter {
    at: Instant,
    pg: Duration,
    bouncer: Duration,
    fleet: Duration,
    machine: Duration,
}

/// CPU used between two meter readings.
struct Used {
    wall: Duration,
    pg: Duration,
    bouncer: Duration,
    fleet: Duration,
    machine: Duration,
}

impl Meter {
    fn read(cluster: &Cluster, bouncer: Option<i32>, fleet: &[i32]) -> Meter {
        Meter {
            at: Instant::now(),
            pg: cluster.postgres_cpu(),
            bouncer: bouncer.map_or(Duration::ZERO, |pid| harness::cpu_of(&[pid])),
            // The processes and the shims and jobs they reaped.
            fleet: fleet
                .iter()
                .filter_map(|p| harness::proc_stat(*p))
                .map(|s| s.cpu + s.children_cpu)
                .sum(),
            machine: harness::machine_busy(),
        }
    }

    fn since(&self, before: &Meter) -> Used {
        Used {
            wall: self.at - before.at,
            pg: self.pg.saturating_sub(before.pg),
            bouncer: self.bouncer.saturating_sub(before.bouncer),
            fleet: self.fleet.saturating_sub(before.fleet),
            machine: self.machine.saturating_sub(before.machine),
        }
    }
}

/// The most backends connected to one database, sampled twice a second.
struct Sampler {
    max: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    async fn start(cluster: &Cluster, oid: u32) -> Result<Sampler> {
        let client = harness::connect(&harness::tcp_url(cluster.server().port, "postgres")).await?;
        let max = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(row) = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datid = $1",
                        &[&oid],
                    )
                    .await
                {
                    m.fetch_max(row.get(0), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Ok(Sampler { max, stop })
    }

    fn reset(&self) {
        self.max.store(0, Ordering::Relaxed);
    }

    fn max(&self) -> i64 {
        self.max.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

//! The benchmark's machinery: the cluster, databases, guardian fleets, and the meters.
//!
//! Owns the PostgreSQL settings the figures are taken under (production-like: durable
//! commits, autovacuum, 128 MB shared buffers, TCP on 127.0.0.1, `pg_stat_statements`), a
//! migrated database per scenario, and measuring: CPU and memory of processes from /proc,
//! statements per database from `pg_stat_statements`, latency distributions from
//! `sisy.runs` (database clock). Does not own any scenario's procedure or its targets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};

use crate::pg::{Server, TestDb};
use crate::util::{self, Guardian};

/// Settings over the test defaults of `pg.rs` (fsync off, autovacuum off, 16 MB buffers, no
/// TCP): the benchmark measures the database as it would run in production. The cluster
/// still lives on tmpfs, so a WAL flush costs a system call, not a disk round trip.
pub const SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "fsync=on",
    "synchronous_commit=on",
    "full_page_writes=on",
    "autovacuum=on",
    "shared_buffers=128MB",
    "shared_preload_libraries=pg_stat_statements",
    "pg_stat_statements.max=1000",
    "max_connections=400",
];

/// The guardian settings a production host would have (the tests' helper defaults to fast
/// heartbeats; these restore the shipped defaults).
pub const PRODUCTION: &str = "heartbeat_interval = \"5s\"\nlease = \"30s\"\n";

pub fn progress(what: &str) {
    eprintln!("sisy-bench: {what}");
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

pub struct Cluster {
    server: Server,
    /// Connected to the `postgres` database, so that measuring adds no statement to the
    /// databases under measurement.
    pub admin: Client,
}

/// A migrated database of one scenario.
pub struct Db {
    /// Its name and TCP URL, in the shape the test helpers take.
    pub test: TestDb,
    pub client: Client,
    pub oid: u32,
}

impl Cluster {
    pub async fn start() -> Result<Cluster> {
        progress("starting PostgreSQL");
        let server = Server::start_private_with(SETTINGS);
        let admin = connect(&tcp_url(server.port, "postgres")).await?;
        admin
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await?;
        Ok(Cluster { server, admin })
    }

    /// The PostgreSQL server (for a pooler in front of it).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// A fresh database with the sisy schema.
    pub async fn database(&self) -> Result<Db> {
        let name = self.server.fresh_database().name;
        let test = TestDb {
            url: tcp_url(self.server.port, &name),
            name,
        };
        let mut client = connect(&test.url).await?;
        sisyphus::migrate::migrate(&mut client).await?;
        let oid = self
            .admin
            .query_one(
                "SELECT oid FROM pg_database WHERE datname = $1",
                &[&test.name],
            )
            .await?
            .get(0);
        Ok(Db { test, client, oid })
    }

    pub async fn conditions(&self) -> Result<Value> {
        let version: String = self
            .admin
            .query_one("SHOW server_version", &[])
            .await?
            .get(0);
        let mut settings = BTreeMap::new();
        for name in [
            "shared_buffers",
            "fsync",
            "synchronous_commit",
            "autovacuum",
            "max_connections",
        ] {
            let v: String = self
                .admin
                .query_one(&format!("SHOW {name}"), &[])
                .await?
                .get(0);
            settings.insert(name, v);
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
        let mem_kib = meminfo("MemTotal").unwrap_or(0);
        Ok(json!({
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu": model,
            "memory_gib": round(mem_kib as f64 / 1048576.0, 1),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "postgres": version,
            "postgres_settings": settings,
            "postgres_data": "tmpfs (/dev/shm): fsync is a system call, not a disk flush",
            "connection": "TCP 127.0.0.1 (loopback)",
            "sisy": env!("CARGO_PKG_VERSION"),
            "sisy_binary": env!("CARGO_BIN_EXE_sisy"),
            "job_user": "guardians run as root; jobs without run_as run as nobody",
        }))
    }

    /// The CPU time of every PostgreSQL process: the postmaster, its live children, and the
    /// children it has reaped (so a backend that ends inside a window still counts).
    pub fn postgres_cpu(&self) -> Duration {
        let pid_file = self.server.data_dir.join("postmaster.pid");
        let Some(postmaster) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        else {
            return Duration::ZERO;
        };
        let mut total = proc_stat(postmaster).map_or(Duration::ZERO, |s| s.cpu + s.children_cpu);
        for pid in pids() {
            if let Some(s) = proc_stat(pid)
                && s.ppid == postmaster
            {
                total += s.cpu;
            }
        }
        total
    }

    /// The backends connected to `db` right now.
    pub async fn backends(&self, db: &Db) -> Result<Vec<i32>> {
        let rows = self
            .admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datid = $1",
                &[&db.oid],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn reset_statements(&self, db: &Db) -> Result<()> {
        self.admin
            .execute("SELECT pg_stat_statements_reset(0, $1, 0)", &[&db.oid])
            .await?;
        Ok(())
    }

    /// What `db` executed since the last reset, by statement.
    pub async fn statements(&self, db: &Db) -> Result<Statements> {
        let rows = self
            .admin
            .query(
                "SELECT query, calls, total_exec_time, shared_blks_hit + shared_blks_read
                   FROM pg_stat_statements WHERE dbid = $1",
                &[&db.oid],
            )
            .await?;
        let mut by_name: BTreeMap<String, Stat> = BTreeMap::new();
        for row in rows {
            let s = by_name.entry(statement_name(row.get(0))).or_default();
            s.calls += row.get::<_, i64>(1);
            s.ms += row.get::<_, f64>(2);
            s.blocks += row.get::<_, i64>(3);
        }
        Ok(Statements(by_name))
    }
}

pub fn tcp_url(port: u16, dbname: &str) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname={dbname}")
}

pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move { drop(connection.await) });
    Ok(client)
}

/// Starts `n` guardians g1..gn on `db` and waits until they are live.
pub async fn fleet(db: &Db, n: usize, extra: &str) -> Vec<Guardian> {
    util::fleet(&db.test, &db.client, n, extra).await
}

/// One statement's totals over a window.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stat {
    pub calls: i64,
    pub ms: f64,
    pub blocks: i64,
}

pub struct Statements(pub BTreeMap<String, Stat>);

impl Statements {
    pub fn get(&self, name: &str) -> Stat {
        self.0.get(name).copied().unwrap_or_default()
    }

    pub fn total(&self) -> Stat {
        self.0.values().fold(Stat::default(), |a, s| Stat {
            calls: a.calls + s.calls,
            ms: a.ms + s.ms,
            blocks: a.blocks + s.blocks,
        })
    }

    /// Per statement: calls, mean ms, buffers per call.
    pub fn to_json(&self) -> Value {
        let map: BTreeMap<&String, Value> = self
            .0
            .iter()
            .map(|(name, s)| {
                let per = |x: f64| round(x / s.calls.max(1) as f64, 3);
                (
                    name,
                    json!({"calls": s.calls, "mean_ms": per(s.ms), "buffers_per_call": per(s.blocks as f64)}),
                )
            })
            .collect();
        json!(map)
    }
}

/// The name of a catalogued statement (its `sql/queries/` file), else the text's start.
fn statement_name(text: &str) -> String {
    use sisyphus::db::q;
    let named = [
        ("runs_tick", q::RUNS_TICK),
        ("jobs_due", q::JOBS_DUE),
        ("jobs_unseen", q::JOBS_UNSEEN),
        ("jobs_set_next_due", q::JOBS_SET_NEXT_DUE),
        ("jobs_lock_for_admission", q::JOBS_LOCK_FOR_ADMISSION),
        ("runs_insert", q::RUNS_INSERT),
        ("runs_claim", q::RUNS_CLAIM),
        ("runs_running_of_jobs", q::RUNS_RUNNING_OF_JOBS),
        ("runs_admit", q::RUNS_ADMIT),
        ("runs_skip", q::RUNS_SKIP),
        ("runs_finish", q::RUNS_FINISH),
        ("heartbeat", q::HEARTBEAT),
        ("hosts_live", q::HOSTS_LIVE),
        ("hosts_register", q::HOSTS_REGISTER),
        ("runs_prune", q::RUNS_PRUNE),
        ("hosts_prune", q::HOSTS_PRUNE),
    ];
    // pg_stat_statements keeps the leading comment and replaces literals by $n, so the
    // first line (always a comment in sql/queries/) identifies the file.
    let first = text.lines().next().unwrap_or("");
    if let Some((name, _)) = named
        .iter()
        .find(|(_, sql)| first.starts_with("--") && sql.lines().next() == Some(first))
    {
        return (*name).to_string();
    }
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(48).collect()
}

/// Latencies in milliseconds as a distribution.
pub fn distribution(mut ms: Vec<f64>) -> Value {
    if ms.is_empty() {
        return json!({"n": 0});
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    json!({
        "n": ms.len(),
        "p50_ms": round(rank(0.50), 1),
        "p90_ms": round(rank(0.90), 1),
        "p99_ms": round(rank(0.99), 1),
        "max_ms": round(ms[ms.len() - 1], 1),
        "mean_ms": round(ms.iter().sum::<f64>() / ms.len() as f64, 1),
    })
}

/// A target and whether the figure meets it (`at_most`: lower is better).
pub fn target(figure: f64, limit: f64, at_most: bool, words: &str) -> Value {
    let met = if at_most {
        figure <= limit
    } else {
        figure >= limit
    };
    json!({"target": words, "met": met})
}

/// Polls `sql` (one row, one bool) every `every` until true; errors at `timeout`.
pub async fn wait_for(
    client: &Client,
    what: &str,
    sql: &str,
    every: Duration,
    timeout: Duration,
) -> Result<Duration> {
    let began = Instant::now();
    loop {
        let done: bool = client.query_one(sql, &[]).await?.get(0);
        if done {
            return Ok(began.elapsed());
        }
        if began.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// What /proc says about one process.
pub struct ProcStat {
    pub ppid: i32,
    /// User + system time of the process itself.
    pub cpu: Duration,
    /// Of its reaped children (jobs, for a guardian; ended backends, for the postmaster).
    pub children_cpu: Duration,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself contain spaces and parentheses.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let secs = |ticks: u64| Duration::from_secs_f64(ticks as f64 / hz as f64);
    Some(ProcStat {
        ppid: rest.get(1)?.parse().ok()?,
        cpu: secs(tick(11) + tick(12)),
        children_cpu: secs(tick(13) + tick(14)),
    })
}

/// CPU time the whole machine spent busy (all cores), from /proc/stat.
pub fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: all but idle and iowait.
        .filter(|(i, _)| !matches!(i, 3 | 4) && *i < 8)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// This benchmark process and the children it reaped (the raw spawns).
pub fn own_cpu() -> Duration {
    proc_stat(std::process::id() as i32).map_or(Duration::ZERO, |s| s.cpu + s.children_cpu)
}

/// The load average over the last minute: other work on the machine skews the figures.
pub fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Resident and peak resident memory in KiB.
pub fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The shim spawners (`sisy __run-shim`) whose parent is one of `guardians`: each guardian
/// starts its own at its first run.
pub fn spawners_of(guardians: &[i32]) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| {
            proc_stat(*pid).is_some_and(|s| guardians.contains(&s.ppid))
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .split(|b| *b == 0)
                    .any(|arg| arg == b"__run-shim")
        })
        .collect()
}

/// The wall-clock instant of boot, in seconds since the epoch: CLOCK_REALTIME minus
/// CLOCK_BOOTTIME, both read now (process start times in /proc count from it).
pub fn wall_clock_at_boot() -> f64 {
    let read = |clock| {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime fills the timespec it is given.
        unsafe { libc::clock_gettime(clock, &mut t) };
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_BOOTTIME)
}

/// The clock ticks per second of /proc's times.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf with a constant name.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// The live children of `parents`.
pub fn children_of(parents: &[i32]) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| proc_stat(*pid).is_some_and(|s| parents.contains(&s.ppid)))
        .collect()
}

/// CPU of this process's reaped children (`getrusage(RUSAGE_CHILDREN)`).
pub fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

pub fn cpu_of(pids: &[i32]) -> Duration {
    pids.iter()
        .filter_map(|p| proc_stat(*p))
        .map(|s| s.cpu)
        .sum()
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn meminfo(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

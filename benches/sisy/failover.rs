//! Scenario 8, failover: the primary crashes under load and its streaming replica is
//! promoted; what the fleet does about it.
//!
//! Each repetition builds its own pair: a primary with the benchmark's settings and a
//! streaming replica (`pg_basebackup -R`) that receives the WAL through a proxy on a unix
//! socket, so that the replication link can be held back. Three release guardians with the
//! shipped timing (`heartbeat_interval` 5 s, `lease` 30 s) reach both servers through one
//! multi-host URL (`host=127.0.0.1,127.0.0.1 port=P,R target_session_attrs=read-write`).
//! Load: a job every second (`* * * * * *`), a trigger every 250 ms from a client on the
//! same URL, and `sleep 5` jobs triggered shortly before the crash so that some run through
//! it. Every job process appends a line to a log file (run id, job, scheduled_for, start and
//! end time): that file, not the database, says what really ran.
//!
//! Then the primary is stopped hard (SIGQUIT to the postmaster, `pg_ctl stop -m immediate`:
//! a crash) and the replica promoted at once (no detection delay: a Patroni or managed
//! service adds its own, typically 10–30 s). Two modes: `caught_up` (replication as it
//! comes, milliseconds behind on loopback) and `replica_2s_behind` (the replication link
//! black-holed two seconds before the crash, as a lagging or partitioned standby: the last
//! two seconds of commits are lost with the primary).
//!
//! Figures per repetition, all from the promoted server and the log: time from the crash
//! to the first run started there, to every guardian's first heartbeat there and first
//! claim; what became of the runs that were running at the crash; each scheduled second
//! around the crash by rows and by executions; acknowledged triggers the new primary does
//! not have; executions the new primary has no record of; the warnings the guardians
//! logged; and, before the crash, which CLI commands work on the replica (a hot standby).
//! Asserts nothing.
//!
//! Not measured here: PgBouncer in front. PgBouncer 1.18 takes one host per database, so
//! following a promotion is the HA tool's job (a virtual IP, DNS, or a config rewrite and
//! `RELOAD`), and the guardians' side of it is a PgBouncer outage (see tests/it/bouncer.rs).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::harness::{self, Cluster, connect, progress, round};
use crate::pg::{Server, StopMode, TestDb};
use crate::util::{self, Guardian, Proxy};

const REPETITIONS: usize = 3;
const GUARDIANS: usize = 3;
const MODES: &[(&str, Option<Duration>)] = &[
    ("caught_up", None),
    ("replica_2s_behind", Some(Duration::from_secs(2))),
];
/// Load before the crash.
const WARM_UP: Duration = Duration::from_secs(8);
/// How long every run that was running at the crash may take to reach a final state: a
/// run whose end was lost is given up after a lease without a heartbeat (30 s), plus beats.
const SETTLE: Duration = Duration::from_secs(60);

/// The shared cluster is not used: each repetition crashes a primary of its own.
pub async fn run(_cluster: &Cluster) -> Result<Value> {
    let mut report = serde_json::Map::new();
    for (mode, behind) in MODES {
        let mut reps = Vec::new();
        for i in 1..=REPETITIONS {
            progress(&format!("failover: {mode}, repetition {i}"));
            reps.push(repetition(*behind).await?);
        }
        report.insert((*mode).to_string(), json!(reps));
    }
    report.insert("guardians".into(), json!(GUARDIANS));
    report.insert(
        "guardian_config".into(),
        json!("shipped timing: heartbeat_interval 5s, lease 30s; listen = true, direct"),
    );
    report.insert(
        "url".into(),
        json!("host=127.0.0.1,127.0.0.1 port=P,R target_session_attrs=read-write"),
    );
    report.insert(
        "load".into(),
        json!("job `tick` every second, a trigger of `trig` every 250 ms, 2 × `sleep 5` triggered 3 s and 2 × 1 s before the crash"),
    );
    report.insert(
        "crash".into(),
        json!("SIGQUIT to the primary's postmaster (immediate shutdown), then pg_promote() on the replica at once"),
    );
    Ok(Value::Object(report))
}

/// One crash and promotion on a fresh pair; the figures of it.
async fn repetition(behind: Option<Duration>) -> Result<Value> {
    let primary = tokio::task::block_in_place(|| Server::start_private_with(harness::SETTINGS));
    let name = tokio::task::block_in_place(|| primary.fresh_database()).name;
    let mut client = connect(&harness::tcp_url(primary.port, &name)).await?;
    sisyphus::migrate::migrate(&mut client).await?;
    let replica = tokio::task::block_in_place(|| primary.start_replica_with(harness::SETTINGS));
    let link = stream_through_proxy(&primary, &replica).await?;
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname={name} target_session_attrs=read-write",
        primary.port, replica.port
    );
    let fleet_db = TestDb {
        name: name.clone(),
        url: url.clone(),
    };
    let dir = util::shared_dir();
    let log = dir.path().join("executions");
    std::fs::write(&log, "")?;
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666))?;
    add_jobs(&client, &log).await?;
    let guardians = harness::fleet(
        &harness::Db {
            test: fleet_db.clone(),
            client,
            // Only the benchmark's statistics use it, and this scenario reads none.
            oid: 0,
        },
        GUARDIANS,
        harness::PRODUCTION,
    )
    .await;
    let pids: Vec<Option<i32>> = guardians.iter().map(Guardian::pid).collect();
    let acks: Acks = Arc::default();
    let failures = Arc::new(Mutex::new(0u64));
    let triggering = tokio::spawn(trigger_loop(url.clone(), acks.clone(), failures.clone()));

    tokio::time::sleep(WARM_UP).await;
    let client = connect(&harness::tcp_url(primary.port, &name)).await?;
    for _ in 0..2 {
        client.query_one("SELECT sisy.trigger('long')", &[]).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    if behind.is_some() {
        link.blackhole();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..2 {
        client.query_one("SELECT sisy.trigger('long')", &[]).await?;
    }
    let readers = tokio::task::block_in_place(|| on_the_replica(&replica, &name));
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(client);

    let crashed_at = Utc::now();
    let crash = Instant::now();
    tokio::task::block_in_place(|| {
        if behind.is_some() {
            // Before the crash: a walsender blocked on the held-back link would not take
            // the immediate shutdown's SIGQUIT (the postmaster SIGKILLs it after 5 s), and
            // what it holds is lost with the primary either way.
            link.cut();
        }
        primary.stop_with(StopMode::Immediate);
        link.cut();
        replica.promote();
    });
    let promoted_ms = ms(crash.elapsed());
    let client = connect(&harness::tcp_url(replica.port, &name)).await?;
    let recovery = watch_recovery(&client, crashed_at).await?;
    // The triggers go on for a while on the new primary, then stop.
    tokio::time::sleep(Duration::from_secs(10)).await;
    triggering.abort();
    let settled = settle(&client, crashed_at).await?;

    let executions = read_executions(&log)?;
    let acks = acks.lock().unwrap().clone();
    let figures = judge(
        &client,
        crashed_at,
        &executions,
        &acks,
        Judged {
            promoted_ms,
            recovery,
            settled,
        },
    )
    .await?;
    let survivors: Vec<Option<i32>> = guardians.iter().map(Guardian::pid).collect();
    let alive = survivors == pids && pids.iter().flatten().all(|pid| !util::process_gone(*pid));
    let mut figures = figures;
    figures["guardians_survived_without_restart"] = json!(alive);
    figures["read_only_commands_on_the_replica"] = readers;
    figures["trigger_attempts_failed"] = json!(*failures.lock().unwrap());
    figures["guardian_warnings"] = warnings(&guardians, crashed_at);
    drop(guardians);
    Ok(figures)
}

/// Whether the CLI's read-only commands work on the replica (a hot standby) while it
/// streams: what a monitoring host pointed at a read replica would run.
fn on_the_replica(replica: &Server, name: &str) -> Value {
    let url = harness::tcp_url(replica.port, name);
    let commands: &[&[&str]] = &[
        &["status"],
        &["jobs", "list"],
        &["runs", "list", "--limit", "5"],
        &["hosts", "list"],
        &["flows", "list"],
        &["db", "status"],
        // Not read-only: what it says when pointed at a replica by mistake.
        &["db", "migrate"],
    ];
    let mut answers = serde_json::Map::new();
    for args in commands {
        let out = util::sisy()
            .args(["--database-url", &url])
            .args(*args)
            .output();
        let answer = match out {
            Ok(o) if o.status.success() => "ok".to_string(),
            Ok(o) => String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("failed")
                .to_string(),
            Err(e) => e.to_string(),
        };
        answers.insert(args.join(" "), json!(answer));
    }
    Value::Object(answers)
}

/// Points the replica's WAL receiver at a proxy in front of the primary, so that the test
/// can black-hole replication, and waits until it streams through it.
async fn stream_through_proxy(primary: &Server, replica: &Server) -> Result<Proxy> {
    let proxy = Proxy::start(primary);
    // The postgres user connects to the proxy's socket.
    std::fs::set_permissions(proxy.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let socket = proxy.dir.path().join(format!(".s.PGSQL.{}", proxy.port));
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777))?;
    let admin = connect(&harness::tcp_url(replica.port, "postgres")).await?;
    let conninfo = format!(
        "host={} port={} user=postgres application_name=replica",
        proxy.dir.path().display(),
        proxy.port
    );
    // Two statements: ALTER SYSTEM refuses to run in the implicit transaction of a batch.
    admin
        .batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = '{conninfo}'"))
        .await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    harness::wait_for(
        &admin,
        "the replica to stream through the proxy",
        &format!(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming' AND sender_host = '{}')",
            proxy.dir.path().display()
        ),
        Duration::from_millis(50),
        Duration::from_secs(30),
    )
    .await?;
    Ok(proxy)
}

async fn add_jobs(client: &Client, log: &Path) -> Result<()> {
    let line = |what: &str| {
        format!(
            "printf '%s %s %s %s %s\\n' {what} \"$SISY_RUN_ID\" \"$SISY_JOB\" \"$SISY_SCHEDULED_FOR\" \"$(date +%s%3N)\" >> {}",
            log.display()
        )
    };
    let short = format!("{} && {}", line("start"), line("end"));
    let long = format!("{} && sleep 5 && {}", line("start"), line("end"));
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, schedule, overlap) VALUES
                ('tick', $1, '* * * * * *', 'forbid'),
                ('trig', $1, NULL, 'allow'),
                ('long', $2, NULL, 'allow')",
            &[&short, &long],
        )
        .await?;
    Ok(())
}

/// Acknowledged triggers: the run id and when the answer came.
type Acks = Arc<Mutex<Vec<(i64, DateTime<Utc>)>>>;

/// Triggers `trig` every 250 ms through the multi-host URL, reconnecting when the server
/// goes; keeps the acknowledged run ids with the time of the answer.
async fn trigger_loop(url: String, acks: Acks, failures: Arc<Mutex<u64>>) {
    let mut client: Option<Client> = None;
    loop {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(&url).await.ok();
        }
        if let Some(c) = &client {
            match c.query_one("SELECT sisy.trigger('trig')", &[]).await {
                Ok(row) => acks.lock().unwrap().push((row.get(0), Utc::now())),
                Err(_) => {
                    *failures.lock().unwrap() += 1;
                    client = None;
                }
            }
        } else {
            *failures.lock().unwrap() += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// When, after the crash, the promoted server saw its first run start and each guardian's
/// first heartbeat and first claim.
struct Recovery {
    first_run_ms: Option<f64>,
    first_beat_ms: BTreeMap<String, f64>,
    first_claim_ms: BTreeMap<String, f64>,
}

async fn watch_recovery(client: &Client, crashed_at: DateTime<Utc>) -> Result<Recovery> {
    let began = Instant::now();
    let mut first_beat_ms = BTreeMap::new();
    loop {
        // A beat sets last_seen; the next one comes a heartbeat_interval later, so polling
        // well inside it catches the first.
        for row in client
            .query(
                "SELECT name, extract(epoch FROM last_seen - $1)::float8 * 1000 FROM sisy.hosts WHERE last_seen > $1",
                &[&crashed_at],
            )
            .await?
        {
            first_beat_ms
                .entry(row.get::<_, String>(0))
                .or_insert(round(row.get(1), 0));
        }
        if first_beat_ms.len() >= GUARDIANS {
            break;
        }
        if began.elapsed() > Duration::from_secs(60) {
            progress("failover: not every guardian heartbeat on the new primary within 60 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = client
        .query(
            "SELECT host, extract(epoch FROM min(started_at) - $1)::float8 * 1000 FROM sisy.runs
              WHERE claimed_at > $1 AND started_at IS NOT NULL GROUP BY host",
            &[&crashed_at],
        )
        .await?;
    let first_claim_ms: BTreeMap<String, f64> = rows
        .iter()
        .map(|r| (r.get(0), round(r.get(1), 0)))
        .collect();
    let first_run_ms = first_claim_ms.values().copied().reduce(f64::min);
    Ok(Recovery {
        first_run_ms,
        first_beat_ms,
        first_claim_ms,
    })
}

/// Waits until no run that started before the crash is still running; how long that took
/// from the crash, or None at the limit.
/// Claimed, not started: a run whose start (`runs_admit`) was lost with the old primary is
/// running there without a `started_at`. The figure is the last `finished_at` of those
/// runs, from the crash.
async fn settle(client: &Client, crashed_at: DateTime<Utc>) -> Result<Option<f64>> {
    let sql = format!(
        "SELECT NOT EXISTS (SELECT 1 FROM sisy.runs WHERE state = 'running' AND claimed_at < '{}')",
        crashed_at.to_rfc3339()
    );
    let waited = harness::wait_for(
        client,
        "runs of the old primary to end",
        &sql,
        Duration::from_millis(200),
        SETTLE,
    )
    .await;
    if waited.is_err() {
        return Ok(None);
    }
    let last: Option<f64> = client
        .query_one(
            "SELECT extract(epoch FROM max(finished_at) - $1)::float8 * 1000 FROM sisy.runs
              WHERE claimed_at < $1 AND finished_at > $1",
            &[&crashed_at],
        )
        .await?
        .get(0);
    Ok(Some(round(last.unwrap_or(0.0), 0)))
}

/// One job process, from the log file.
#[derive(Debug, Clone)]
struct Execution {
    run_id: i64,
    job: String,
    scheduled_for: String,
    started_ms: i64,
    ended_ms: Option<i64>,
}

fn read_executions(log: &Path) -> Result<Vec<Execution>> {
    let text = std::fs::read_to_string(log).context("read the executions log")?;
    let mut by_run: Vec<Execution> = Vec::new();
    let mut open: HashMap<i64, usize> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [what, id, job, scheduled, at] = f[..] else {
            continue;
        };
        let (Ok(id), Ok(at)) = (id.parse::<i64>(), at.parse::<i64>()) else {
            continue;
        };
        if what == "start" {
            open.insert(id, by_run.len());
            by_run.push(Execution {
                run_id: id,
                job: job.to_string(),
                scheduled_for: scheduled.to_string(),
                started_ms: at,
                ended_ms: None,
            });
        } else if let Some(i) = open.remove(&id) {
            by_run[i].ended_ms = Some(at);
        }
    }
    Ok(by_run)
}

struct Judged {
    promoted_ms: f64,
    recovery: Recovery,
    settled: Option<f64>,
}

/// The figures of one repetition, from the promoted server's rows and the executions log.
async fn judge(
    client: &Client,
    crashed_at: DateTime<Utc>,
    executions: &[Execution],
    acks: &[(i64, DateTime<Utc>)],
    j: Judged,
) -> Result<Value> {
    let crash_ms = crashed_at.timestamp_millis();
    let rows: HashMap<i64, Row> = client
        .query(
            "SELECT id, job_name, state, coalesce(error, ''), coalesce(host, ''), scheduled_for FROM sisy.runs",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                Row {
                    job: r.get(1),
                    state: r.get(2),
                    error: r.get(3),
                    host: r.get(4),
                    scheduled_for: r.get(5),
                },
            )
        })
        .collect();

    // The runs whose process was running at the crash, and what the new primary says.
    let mut across = Vec::new();
    for e in executions
        .iter()
        .filter(|e| e.started_ms < crash_ms && e.ended_ms.is_none_or(|end| end > crash_ms))
    {
        let row = rows.get(&e.run_id).filter(|r| r.job == e.job);
        let executions_of_run = executions.iter().filter(|x| x.run_id == e.run_id).count();
        across.push(json!({
            "run_id": e.run_id,
            "job": e.job,
            "started_before_crash_ms": crash_ms - e.started_ms,
            "process_ran_to_its_end": e.ended_ms.is_some(),
            "state_on_new_primary": row.map_or("no such run".to_string(), |r| r.state.clone()),
            "host": row.map(|r| r.host.clone()),
            "error": row.map(|r| r.error.clone()).filter(|e| !e.is_empty()),
            "executions_of_this_run_id": executions_of_run,
        }));
    }

    // Executions the new primary has no record of (the run is missing, is another job's,
    // or is not in a final state that a process could have produced: pending).
    let unrecorded: Vec<Value> = executions
        .iter()
        .filter(|e| {
            rows.get(&e.run_id)
                .is_none_or(|r| r.job != e.job || r.state == "pending")
        })
        .map(|e| {
            json!({
                "run_id": e.run_id, "job": e.job, "started_ms_after_crash": e.started_ms - crash_ms,
                "row_now": rows.get(&e.run_id).map(|r| format!("{} {}", r.job, r.state)),
            })
        })
        .collect();

    // Each scheduled second of `tick` from 10 s before the crash to 10 s after it (the
    // judging starts at least 14 s after it, so every second of the window is due).
    let window = |s: &DateTime<Utc>| {
        let d = s.timestamp_millis() - crash_ms;
        (-10_000..10_000).contains(&d)
    };
    let mut seconds: BTreeMap<DateTime<Utc>, Second> = BTreeMap::new();
    let first = crashed_at - chrono::Duration::seconds(10);
    for k in 0..25 {
        let at = first + chrono::Duration::seconds(k);
        let at = DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at);
        if window(&at) {
            seconds.entry(at).or_default();
        }
    }
    for r in rows.values().filter(|r| r.job == "tick") {
        if let Some(slot) = seconds.get_mut(&r.scheduled_for) {
            slot.0 += 1;
            slot.2.push(r.state.clone());
        }
    }
    for e in executions.iter().filter(|e| e.job == "tick") {
        if let Ok(at) = DateTime::parse_from_rfc3339(&e.scheduled_for)
            && let Some(slot) = seconds.get_mut(&at.with_timezone(&Utc))
        {
            slot.1 += 1;
        }
    }
    let count = |f: &dyn Fn(&Second) -> bool| seconds.values().filter(|s| f(s)).count();
    let odd: Vec<Value> = seconds
        .iter()
        .filter(|(_, s)| s.0 != 1 || s.1 != 1 || s.2.iter().any(|st| st != "succeeded"))
        .map(|(at, s)| {
            json!({"scheduled_for_ms_after_crash": at.timestamp_millis() - crash_ms,
                   "rows": s.0, "executions": s.1, "states": s.2})
        })
        .collect();

    let acked_before: Vec<&(i64, DateTime<Utc>)> =
        acks.iter().filter(|(_, at)| *at < crashed_at).collect();
    let acked_lost: Vec<i64> = acked_before
        .iter()
        .filter(|(id, _)| rows.get(id).is_none_or(|r| r.job != "trig"))
        .map(|(id, _)| *id)
        .collect();
    let last_ack_before = acked_before.iter().map(|(_, at)| *at).max();
    let first_ack_after = acks
        .iter()
        .filter(|(_, at)| *at >= crashed_at)
        .map(|(_, at)| *at)
        .min();
    let trigger_gap_ms = match (last_ack_before, first_ack_after) {
        (Some(a), Some(b)) => Some(((b - a).as_seconds_f64() * 1000.0).round()),
        _ => None,
    };
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows.values() {
        *states.entry(r.state.clone()).or_default() += 1;
        if r.state != "succeeded" {
            let error: String = r
                .error
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            *errors
                .entry(format!("{} {}: {error}", r.job, r.state))
                .or_default() += 1;
        }
    }
    let max = |m: &BTreeMap<String, f64>| m.values().copied().fold(0.0, f64::max);
    Ok(json!({
        "crash_to_promoted_ms": j.promoted_ms,
        "crash_to_first_run_started_ms": j.recovery.first_run_ms,
        "crash_to_every_guardian_heartbeating_ms": max(&j.recovery.first_beat_ms),
        "first_heartbeat_ms_by_guardian": j.recovery.first_beat_ms,
        "first_claim_ms_by_guardian": j.recovery.first_claim_ms,
        "crash_to_last_run_of_the_old_primary_recorded_ms": j.settled,
        "runs_running_at_the_crash": across,
        "executions_without_a_record": unrecorded,
        "tick_seconds": {
            "window": "scheduled_for from 10 s before to 10 s after the crash",
            "seconds": seconds.len(),
            "once_and_succeeded": count(&|s| s.0 == 1 && s.1 == 1 && s.2.iter().all(|st| st == "succeeded")),
            "missing_rows": count(&|s| s.0 == 0),
            "executed_more_than_once": count(&|s| s.1 > 1),
            "not_executed": count(&|s| s.1 == 0),
            "other": odd,
        },
        "triggers": {
            "acknowledged_before_crash": acked_before.len(),
            "acknowledged_but_missing_on_new_primary": acked_lost,
            "gap_between_acknowledgements_ms": trigger_gap_ms,
        },
        "runs_by_state": states,
        "runs_not_succeeded_by_error": errors,
    }))
}

/// A scheduled second of `tick`: its rows, its executions, the rows' states.
type Second = (usize, usize, Vec<String>);

struct Row {
    job: String,
    state: String,
    error: String,
    host: String,
    scheduled_for: DateTime<Utc>,
}

/// The distinct warnings and errors the guardians logged after the crash, with counts.
fn warnings(guardians: &[Guardian], crashed_at: DateTime<Utc>) -> Value {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for g in guardians {
        for line in g.log().lines() {
            if !(line.contains("WARN") || line.contains("ERROR")) {
                continue;
            }
            let stamp = line.split_whitespace().next().unwrap_or("");
            if DateTime::parse_from_rfc3339(stamp).is_ok_and(|t| t < crashed_at) {
                continue;
            }
            // The message without the time stamp and the numbers that differ per line.
            let text: String = line
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            *seen.entry(text).or_default() += 1;
        }
    }
    json!(seen)
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 0)
}

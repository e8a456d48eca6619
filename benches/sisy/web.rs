//! Scenario web: the dashboard (`sisy web`) at fleet size. With 100,000 jobs and about a
//! million runs, does every page take at most 100 ms of the server's own time?
//!
//! The database is loaded as `web/populate.rs` says (about 35 s). Then one real
//! `sisy web --listen 127.0.0.1:PORT` (the release binary, on a free loopback port) is
//! started and polled until it answers, and each page is requested [`REPEATS`] times, one
//! request at a time, after one request that is not counted (its first plans, its cold
//! pages), by a hand-written HTTP/1.1 client (`web/http.rs`: one connection per request,
//! `Connection: close`). Per page: the server's time from its `Server-Timing: app;dur=`
//! header (which includes its database time), the client's wall time (connect to last byte),
//! the body's size, the statements the server ran for it (`pg_stat_statements`, reset after
//! the uncounted request) and the target: every counted request's server time at most
//! [`TARGET_MS`]. A status other than 200, a missing `Server-Timing` or a failed request is
//! the page's error (and a missed target), not the end of the scenario; a server that does
//! not start or exits is.
//!
//! The pages are the dashboard's, with real names and ids from the loaded database: the
//! fleet, the jobs (first page, a keyset page from the middle, a substring search that
//! matches many and one that matches one), the job with the most runs, the runs (first page,
//! from the middle, of the busiest and of the quietest job, failed, of the busiest host, of
//! the host with fewest runs and of a host with none, in an hour three days ago), a run with
//! ANSI colours in its output and one with 32 kB of output, the flow runs, the largest flow
//! run's graph, the missed runs, and the stylesheet. The server's log goes to
//! `target/sisy-bench/web-server.log`.
//!
//! `SISY_BENCH_KEEP=1` keeps the cluster (and the server, if it started) after the pages,
//! until Enter or SIGINT, and prints how to connect: for EXPLAIN of candidate queries.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::harness::{self, Cluster, Db, distribution, progress, round, target};

mod http;
mod populate;

const REPEATS: usize = 20;
const TARGET_MS: f64 = 100.0;
const TARGET: &str = "every counted request's server time at most 100 ms";
/// How long `sisy web` may take to answer its first request.
const STARTUP: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A page is requested fewer times once its requests have taken this long.
const PAGE_BUDGET: Duration = Duration::from_secs(30);

/// What a query string's value leaves as it is: RFC 3986's unreserved characters.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub async fn run(cluster: &Cluster) -> Result<Value> {
    let db = cluster.database().await?;
    progress(&format!(
        "web: loading {} jobs, about 1,000,000 runs, 200 hosts and 1,000 flow runs",
        populate::JOBS
    ));
    let population = populate::populate(&db).await?;
    let (pages, picked) = pages(&db).await?;
    let measured = measure(cluster, &db, &pages).await;
    if measured.is_err() {
        keep(&db, None).await;
    }
    let (server, figures) = measured?;
    let met = figures
        .as_object()
        .is_some_and(|m| m.values().all(|p| p["target"]["met"] == json!(true)));
    Ok(json!({
        "setup": {
            "server": "one `sisy web --listen 127.0.0.1:PORT` (release build), direct connection to the cluster",
            "requests": format!("per page 1 uncounted, then {REPEATS}, one at a time, a new connection each (HTTP/1.1, Connection: close)"),
            "server_ms": "the response's Server-Timing app;dur (the server's own time, database included)",
            "client_ms": "connect to the body's last byte, in this process",
            "db": "pg_stat_statements of the database over the counted requests",
        },
        "population": population,
        "picked": picked,
        "server": server,
        "pages": figures,
        "target": format!("every page: {TARGET}"),
        "met": met,
    }))
}

/// The pages to request, (name, path), with real names and ids; and what was picked.
async fn pages(db: &Db) -> Result<(Vec<(&'static str, String)>, Value)> {
    let c = &db.client;
    let enc = |v: &str| utf8_percent_encode(v, VALUE).to_string();
    let job_runs = "SELECT job_name, count(*) FROM sisy.runs WHERE flow_run_id IS NULL
                     GROUP BY job_name ORDER BY count(*) DESC, job_name LIMIT 1";
    let busy_job = c.query_one(job_runs, &[]).await?;
    let quiet_job = c
        .query_one(&job_runs.replace("count(*) DESC", "count(*) ASC"), &[])
        .await?;
    let (busy_job, busy_job_runs): (String, i64) = (busy_job.get(0), busy_job.get(1));
    let (quiet_job, quiet_job_runs): (String, i64) = (quiet_job.get(0), quiet_job.get(1));
    let middle_job: String = c
        .query_one(
            "SELECT name FROM sisy.jobs ORDER BY name
              OFFSET (SELECT count(*) / 2 FROM sisy.jobs) LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    // One job's own prefix: a search that matches one job and must still read them all.
    let rare = format!("{}-", middle_job.split('-').next().unwrap_or(&middle_job));
    let matches = |q: String| async move {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM sisy.jobs WHERE strpos(name, $1) > 0",
                &[&q],
            )
            .await?
            .get(0);
        anyhow::Ok(n)
    };
    let (common_matches, rare_matches) = (
        matches("backup".into()).await?,
        matches(rare.clone()).await?,
    );

    let mut hosts: Vec<(String, i64)> = c
        .query(
            "SELECT host, count(*) FROM sisy.runs WHERE host IS NOT NULL
              GROUP BY host ORDER BY count(*) DESC, host",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let idle_host: String = c
        .query_one(
            "SELECT name FROM sisy.hosts WHERE NOT name = ANY ($1::text[]) ORDER BY name LIMIT 1",
            &[&hosts.iter().map(|h| h.0.clone()).collect::<Vec<_>>()],
        )
        .await
        .context("a host without runs")?
        .get(0);
    let (few_host, few_host_runs) = hosts.pop().context("no host has runs")?;
    let (busy_host, busy_host_runs) = hosts.first().cloned().context("one host has runs")?;

    let middle_run: i64 = c
        .query_one(
            "SELECT id FROM sisy.runs ORDER BY id OFFSET (SELECT count(*) / 2 FROM sisy.runs) LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    let ansi_run: i64 = c
        .query_one(
            "SELECT id FROM sisy.runs WHERE output LIKE E'%\\x1b[%' AND state = 'succeeded'
              ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    let large = c
        .query_one(
            "SELECT id, output_bytes FROM sisy.runs WHERE output_bytes > 10000 ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    let (large_run, large_bytes): (i64, i64) = (large.get(0), large.get(1));
    let flow = c
        .query_one(
            "SELECT m.flow_run_id, count(*) FROM sisy.flow_run_members m
               JOIN sisy.flow_runs f ON f.id = m.flow_run_id
              WHERE f.state <> 'running'
              GROUP BY 1 ORDER BY 2 DESC, 1 DESC LIMIT 1",
            &[],
        )
        .await?;
    let (flow_run, flow_members): (i64, i64) = (flow.get(0), flow.get(1));
    let window = c
        .query_one(
            "SELECT w.since, w.since + interval '1 hour',
                    (SELECT count(*) FROM sisy.runs
                      WHERE scheduled_for >= w.since AND scheduled_for < w.since + interval '1 hour')
               FROM (SELECT date_trunc('hour', now()) - interval '3 days' AS since) w",
            &[],
        )
        .await?;
    let rfc3339 = |t: chrono::DateTime<chrono::Utc>| {
        enc(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    let (since, until, window_runs): (
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        i64,
    ) = (window.get(0), window.get(1), window.get(2));

    let pages = vec![
        ("fleet", "/".to_string()),
        ("jobs", "/jobs".to_string()),
        (
            "jobs_after_middle",
            format!("/jobs?after={}", enc(&middle_job)),
        ),
        ("jobs_search_common", "/jobs?q=backup".to_string()),
        ("jobs_search_rare", format!("/jobs?q={}", enc(&rare))),
        ("job_busiest", format!("/job?name={}", enc(&busy_job))),
        ("runs", "/runs".to_string()),
        ("runs_before_middle", format!("/runs?before={middle_run}")),
        ("runs_job_busiest", format!("/runs?job={}", enc(&busy_job))),
        (
            "runs_job_quietest",
            format!("/runs?job={}", enc(&quiet_job)),
        ),
        ("runs_failed", "/runs?state=failed".to_string()),
        (
            "runs_host_busiest",
            format!("/runs?host={}", enc(&busy_host)),
        ),
        ("runs_host_fewest", format!("/runs?host={}", enc(&few_host))),
        ("runs_host_none", format!("/runs?host={}", enc(&idle_host))),
        (
            "runs_hour_3_days_ago",
            format!("/runs?since={}&until={}", rfc3339(since), rfc3339(until)),
        ),
        ("run_ansi_output", format!("/run?id={ansi_run}")),
        ("run_large_output", format!("/run?id={large_run}")),
        ("flows", "/flows".to_string()),
        ("flow_largest", format!("/flow?id={flow_run}")),
        ("missed", "/missed".to_string()),
        ("style", "/style.css".to_string()),
    ];
    let picked = json!({
        "busiest_job": {"name": busy_job, "runs": busy_job_runs},
        "quietest_job": {"name": quiet_job, "runs": quiet_job_runs},
        "middle_job": middle_job,
        "search_common": {"q": "backup", "jobs": common_matches},
        "search_rare": {"q": rare, "jobs": rare_matches},
        "busiest_host": {"name": busy_host, "runs": busy_host_runs},
        "fewest_host": {"name": few_host, "runs": few_host_runs},
        "host_without_runs": idle_host,
        "middle_run": middle_run,
        "ansi_run": ansi_run,
        "large_output_run": {"id": large_run, "output_bytes": large_bytes},
        "flow_run": {"id": flow_run, "members": flow_members},
        "hour": {"since": since.to_rfc3339(), "until": until.to_rfc3339(), "runs": window_runs},
    });
    Ok((pages, picked))
}

/// A running `sisy web`; dropping it kills it.
struct WebServer {
    child: Child,
    command: String,
    log: PathBuf,
}

impl WebServer {
    fn start(db: &Db, port: u16) -> Result<WebServer> {
        let dir = PathBuf::from("target/sisy-bench");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("web-server.log");
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let listen = format!("127.0.0.1:{port}");
        let bin = env!("CARGO_BIN_EXE_sisy");
        let command = format!("{bin} web --listen {listen}");
        let child = Command::new(bin)
            .args(["web", "--listen", &listen, "--database-url", &db.test.url])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start `{command}`"))?;
        Ok(WebServer {
            child,
            command,
            log,
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The end of its log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.trim().is_empty() {
            format!("(nothing in {})", self.log.display())
        } else {
            format!("the end of {}:\n{tail}", self.log.display())
        }
    }

    /// Polls until it answers any HTTP request; errors if it exits first or takes too long.
    async fn wait_ready(&mut self, port: u16) -> Result<Duration> {
        let began = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "`{}` exited ({status}) before it answered on 127.0.0.1:{port}; is there a \
                     `sisy web` in this build? {}",
                    self.command,
                    self.log_tail()
                );
            }
            let last = match tokio::task::block_in_place(|| {
                http::get(port, "/style.css", Duration::from_secs(5))
            }) {
                Ok(_) => return Ok(began.elapsed()),
                Err(e) => format!("{e:#}"),
            };
            if began.elapsed() > STARTUP {
                bail!(
                    "`{}` did not answer on 127.0.0.1:{port} within {STARTUP:?} (last attempt: \
                     {last}); {}",
                    self.command,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then SIGKILL after 5 s.
    fn stop(&mut self) {
        // SAFETY: kill with a pid of our own child, which has not been reaped.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the server, requests every page, stops it: (the server's figures, the pages').
async fn measure(
    cluster: &Cluster,
    db: &Db,
    pages: &[(&'static str, String)],
) -> Result<(Value, Value)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    progress(&format!("web: starting `sisy web` on 127.0.0.1:{port}"));
    let mut server = WebServer::start(db, port)?;
    let ready = server.wait_ready(port).await?;
    let cpu_before = harness::proc_stat(server.pid()).map(|s| s.cpu);
    let mut figures = serde_json::Map::new();
    for (name, path) in pages {
        progress(&format!("web: {name}: GET {path}"));
        let page = match page(cluster, db, port, path).await {
            Ok(page) => page,
            // A request that failed (the connection closed, a timeout) while the server
            // still runs is this page's error; a server that has gone ends the scenario.
            Err(e) if matches!(server.child.try_wait(), Ok(None)) => {
                progress(&format!("web: {name} failed: {e:#}"));
                json!({
                    "path": path,
                    "error": format!("{e:#}"),
                    "target": {"target": TARGET, "met": false},
                })
            }
            Err(e) => return Err(e.context(format!("GET {path}: {}", server.log_tail()))),
        };
        figures.insert(name.to_string(), page);
    }
    let cpu = match (cpu_before, harness::proc_stat(server.pid())) {
        (Some(before), Some(after)) => Some(round((after.cpu - before).as_secs_f64(), 2)),
        _ => None,
    };
    let (rss, peak) = harness::memory_kib(server.pid());
    keep(db, Some(port)).await;
    server.stop();
    let server = json!({
        "command": server.command,
        "answered_after_ms": round(ready.as_secs_f64() * 1000.0, 1),
        "cpu_s_over_the_pages": cpu,
        "rss_kib": rss,
        "peak_rss_kib": peak,
        "log": server.log.display().to_string(),
    });
    Ok((server, Value::Object(figures)))
}

/// One page: an uncounted request, then [`REPEATS`] counted ones.
async fn page(cluster: &Cluster, db: &Db, port: u16, path: &str) -> Result<Value> {
    let get = || tokio::task::block_in_place(|| http::get(port, path, REQUEST_TIMEOUT));
    let first = get()?;
    cluster.reset_statements(db).await?;
    let (mut server_ms, mut client_ms) = (Vec::new(), Vec::new());
    let mut problems: Vec<String> = Vec::new();
    let mut bytes = 0;
    let began = Instant::now();
    for _ in 0..REPEATS {
        let r = get()?;
        if r.status != 200 {
            let start = String::from_utf8_lossy(&r.body[..r.body.len().min(200)]).into_owned();
            problems.push(format!("status {}: {start}", r.status));
        }
        match r.server_timing("app") {
            Some(ms) => server_ms.push(ms),
            None => problems.push(format!(
                "no `Server-Timing: app;dur=` (got {:?})",
                r.header("server-timing").collect::<Vec<_>>()
            )),
        }
        client_ms.push(r.wall.as_secs_f64() * 1000.0);
        bytes = r.body.len();
        if began.elapsed() > PAGE_BUDGET {
            break;
        }
    }
    let n = client_ms.len();
    let statements = cluster.statements(db).await?;
    let total = statements.total();
    let slowest = statements
        .0
        .iter()
        .max_by(|a, b| a.1.ms.total_cmp(&b.1.ms))
        .map(|(text, s)| {
            json!({
                "statement": text,
                "calls_per_request": round(s.calls as f64 / n as f64, 1),
                "mean_ms": round(s.ms / s.calls.max(1) as f64, 3),
            })
        });
    let max = server_ms.iter().copied().fold(f64::NAN, f64::max);
    let mut target = target(
        if max.is_nan() { f64::INFINITY } else { max },
        TARGET_MS,
        true,
        TARGET,
    );
    problems.dedup();
    if !problems.is_empty() {
        target["met"] = json!(false);
    }
    let server = distribution(server_ms);
    Ok(json!({
        "path": path,
        "requests": n,
        "server_p50_ms": server["p50_ms"],
        "server_max_ms": server["max_ms"],
        "target_ms": TARGET_MS,
        "target": target,
        "server_ms": server,
        "client_ms": distribution(client_ms),
        "first_request": {
            "status": first.status,
            "server_ms": first.server_timing("app").map(|ms| round(ms, 1)),
            "client_ms": round(first.wall.as_secs_f64() * 1000.0, 1),
        },
        "body_bytes": bytes,
        "db": {
            "statements_per_request": round(total.calls as f64 / n as f64, 1),
            "db_ms_per_request": round(total.ms / n as f64, 3),
            "buffers_per_request": round(total.blocks as f64 / n as f64, 1),
            "slowest": slowest,
        },
        "errors": problems,
    }))
}

/// With `SISY_BENCH_KEEP` set (not empty or 0): says how to reach the database (and the
/// server), then waits for Enter on stdin or SIGINT.
async fn keep(db: &Db, port: Option<u16>) {
    if !std::env::var("SISY_BENCH_KEEP").is_ok_and(|v| !v.is_empty() && v != "0") {
        return;
    }
    let server = port
        .map(|p| format!(" and `sisy web` on http://127.0.0.1:{p}/"))
        .unwrap_or_default();
    progress(&format!(
        "web: SISY_BENCH_KEEP: keeping the database{server}: psql \"{}\"; press Enter (or \
         send SIGINT to pid {}) to go on",
        db.test.url,
        std::process::id()
    ));
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own, not spawn_blocking: the runtime would wait for it at exit.
    std::thread::spawn(move || {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            let _ = tx.send(());
        }
    });
    let enter = async {
        if rx.await.is_err() {
            // stdin is closed: only the signal ends the wait.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = enter => {}
    }
}

//! The history scenario's measuring: one window of the running load (statements, latency,
//! the table's size and counters, pruning, the claim's plan), the table's figures, and the
//! autovacuums of `sisy.runs` the server logged. Does not own the procedure or the targets
//! (`history.rs`).

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};
use tokio_postgres::Client;

use super::{Instant_, RETENTION_SECS};
use crate::harness::{self, Cluster, Db, distribution, round};
use crate::util::Guardian;

/// One measured window of the running load.
pub struct Window {
    pub latency: Value,
    not_started: i64,
    pub runs_per_s: f64,
    statements: harness::Statements,
    prune: Value,
    table_before: Value,
    table_after: Value,
    pub over_retention_before: i64,
    pub over_retention_after: i64,
    claim_plan: Value,
    window_s: f64,
    /// Where in the window the latency went: per 10 s slice, and the slowest runs.
    slices: Value,
    slowest: Value,
    /// The housekeeping passes that ended in the window, from the guardians' logs.
    passes: Value,
    /// What ended the window, and how many autovacuums of `sisy.runs` ended in it.
    ended_by: Value,
}

/// When a window ends.
pub enum Until {
    /// After this long.
    Elapsed(Duration),
    /// Once autovacuum has ended this many more vacuums of `sisy.runs` (its
    /// `autovacuum_count` in `pg_stat_user_tables`), or at the bound, whichever comes first.
    Autovacuums(i64, Duration),
}

impl Until {
    async fn wait(&self, client: &Client) -> Result<Value> {
        match *self {
            Until::Elapsed(d) => {
                tokio::time::sleep(d).await;
                Ok(json!({"elapsed_s": d.as_secs()}))
            }
            Until::Autovacuums(n, bound) => {
                let began = Instant::now();
                let first = autovacuum_count(client).await?;
                loop {
                    let now = autovacuum_count(client).await?;
                    if now >= first + n || began.elapsed() >= bound {
                        return Ok(json!({
                            "autovacuums_wanted": n,
                            "autovacuums_ended": now - first,
                            "bound_s": bound.as_secs(),
                            "bound_reached": now < first + n,
                        }));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// How many autovacuums of `sisy.runs` have ended (statistics are read afresh: each
/// statement is its own transaction).
pub async fn autovacuum_count(client: &Client) -> Result<i64> {
    Ok(client
        .query_one(
            "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = 'sisy.runs'::regclass",
            &[],
        )
        .await?
        .get(0))
}

impl Window {
    pub fn mean_ms(&self, name: &str) -> f64 {
        let s = self.statements.get(name);
        s.ms / s.calls.max(1) as f64
    }

    pub fn buffers_per_call(&self, name: &str) -> f64 {
        let s = self.statements.get(name);
        s.blocks as f64 / s.calls.max(1) as f64
    }

    pub fn table_delta(&self, key: &str) -> f64 {
        let v = |t: &Value| t["counters"][key].as_f64().unwrap_or(0.0);
        v(&self.table_after) - v(&self.table_before)
    }

    pub fn to_json(&self) -> Value {
        let named = |name: &str| {
            let s = self.statements.get(name);
            json!({
                "calls": s.calls,
                "mean_ms": round(s.ms / s.calls.max(1) as f64, 3),
                "buffers_per_call": round(s.blocks as f64 / s.calls.max(1) as f64, 1),
            })
        };
        let deleted = self.table_delta("n_tup_del");
        let inserted = self.table_delta("n_tup_ins");
        json!({
            "window_s": round(self.window_s, 1),
            "ended_by": self.ended_by,
            "runs_per_s": round(self.runs_per_s, 1),
            "dispatch_latency": self.latency,
            "dispatch_by_10s": self.slices,
            "slowest_runs": self.slowest,
            "due_not_started": self.not_started,
            "runs_claim": named("runs_claim"),
            "runs_tick": named("runs_tick"),
            "runs_finish": named("runs_finish"),
            "runs_insert": named("runs_insert"),
            "heartbeat": named("heartbeat"),
            "runs_prune": self.prune,
            "housekeeping_passes": self.passes,
            "rows_past_retention": {"before": self.over_retention_before, "after": self.over_retention_after},
            "rows_deleted_per_s": round(deleted / self.window_s, 1),
            "rows_inserted_per_s": round(inserted / self.window_s, 1),
            "table_before": self.table_before,
            "table_after": self.table_after,
            "claim_plan_after": self.claim_plan,
            "statements": self.statements.to_json(),
        })
    }
}

pub async fn window(
    cluster: &Cluster,
    db: &Db,
    guardians: &[Guardian],
    until: Until,
) -> Result<Window> {
    let over_retention_before = over_retention(&db.client).await?;
    let table_before = sizes(&db.client).await?;
    cluster.reset_statements(db).await?;
    let start: Instant_ = db.client.query_one("SELECT now()", &[]).await?.get(0);
    let ended_by = until.wait(&db.client).await?;
    let end: Instant_ = db.client.query_one("SELECT now()", &[]).await?.get(0);
    let statements = cluster.statements(db).await?;
    let prune = prune_statements(cluster, db).await?;
    // The counters of pg_stat_user_tables are sent at the end of a backend's transactions,
    // at most once a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let table_after = sizes(&db.client).await?;
    let over_retention_after = over_retention(&db.client).await?;
    let rows = db
        .client
        .query(
            "SELECT extract(epoch FROM started_at - due_at)::float8 * 1000 FROM sisy.runs
              WHERE job_name LIKE 'history-%' AND due_at >= $1 AND due_at < $2
                AND started_at IS NOT NULL AND reason = 'schedule'",
            &[&start, &end],
        )
        .await?;
    let latencies: Vec<f64> = rows.iter().map(|r| r.get(0)).collect();
    let not_started: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE job_name LIKE 'history-%' AND reason = 'schedule'
                AND due_at >= $1 AND due_at < $2 AND started_at IS NULL",
            &[&start, &end],
        )
        .await?
        .get(0);
    let window_s = (end - start).as_seconds_f64();
    let slices = db
        .client
        .query(
            "SELECT floor(extract(epoch FROM due_at - $1) / 10)::int * 10,
                    count(*), percentile_disc(0.99) WITHIN GROUP (ORDER BY l), max(l)
               FROM (SELECT due_at, extract(epoch FROM started_at - due_at)::float8 * 1000 AS l
                       FROM sisy.runs WHERE job_name LIKE 'history-%' AND reason = 'schedule'
                        AND due_at >= $1 AND due_at < $2 AND started_at IS NOT NULL) s
              GROUP BY 1 ORDER BY 1",
            &[&start, &end],
        )
        .await?
        .iter()
        .map(|r| {
            json!({"from_s": r.get::<_, i32>(0), "runs": r.get::<_, i64>(1),
                   "p99_ms": round(r.get(2), 1), "max_ms": round(r.get(3), 1)})
        })
        .collect::<Vec<_>>();
    let slowest = db
        .client
        .query(
            "SELECT extract(epoch FROM due_at - $1)::float8,
                    extract(epoch FROM started_at - due_at)::float8 * 1000, host
               FROM sisy.runs WHERE job_name LIKE 'history-%' AND reason = 'schedule'
                AND due_at >= $1 AND due_at < $2 AND started_at IS NOT NULL
              ORDER BY started_at - due_at DESC LIMIT 5",
            &[&start, &end],
        )
        .await?
        .iter()
        .map(|r| {
            json!({"due_s_into_window": round(r.get(0), 2), "latency_ms": round(r.get(1), 1),
                   "host": r.get::<_, Option<String>>(2)})
        })
        .collect::<Vec<_>>();
    let passes = passes(guardians, start, end);
    let claim_plan = explain_claim(&db.client).await?;
    Ok(Window {
        runs_per_s: latencies.len() as f64 / window_s,
        latency: distribution(latencies),
        not_started,
        statements,
        prune,
        table_before,
        table_after,
        over_retention_before,
        over_retention_after,
        claim_plan,
        window_s,
        slices: json!(slices),
        slowest: json!(slowest),
        passes,
        ended_by,
    })
}

/// The housekeeping passes that deleted something and ended between `start` and `end`: the
/// guardian's log line (`old history deleted`), its end in seconds into the window.
fn passes(guardians: &[Guardian], start: Instant_, end: Instant_) -> Value {
    let mut found = Vec::new();
    for g in guardians {
        for line in g
            .log()
            .lines()
            .filter(|l| l.contains("old history deleted"))
        {
            let plain = strip_ansi(line);
            let Some(at) = plain
                .split_whitespace()
                .next()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
            else {
                continue;
            };
            if at >= start && at < end {
                found.push(json!({
                    "ended_s_into_window": round((at - start).as_seconds_f64(), 2),
                    "log": plain,
                }));
            }
        }
    }
    json!(found)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence: ESC [ ... letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Finished runs older than the retention (through the index runs_finished).
async fn over_retention(client: &Client) -> Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE finished_at < now() - make_interval(secs => $1)",
            &[&RETENTION_SECS],
        )
        .await?
        .get(0))
}

/// The table's size and counters.
pub async fn sizes(client: &Client) -> Result<Value> {
    let row = client
        .query_one(
            "SELECT pg_total_relation_size('sisy.runs')::float8 / 1048576,
                    pg_relation_size('sisy.runs')::float8 / 1048576,
                    pg_indexes_size('sisy.runs')::float8 / 1048576,
                    pg_relation_size('sisy.runs_pending_due')::float8 / 8192,
                    pg_relation_size('sisy.runs_running')::float8 / 8192,
                    n_live_tup, n_dead_tup, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,
                    autovacuum_count, vacuum_count, autoanalyze_count,
                    last_autovacuum::text
               FROM pg_stat_user_tables WHERE relid = 'sisy.runs'::regclass",
            &[],
        )
        .await?;
    let mb = |i: usize| round(row.get::<_, f64>(i), 1);
    let n = |i: usize| row.get::<_, i64>(i);
    Ok(json!({
        "total_mb": mb(0),
        "heap_mb": mb(1),
        "indexes_mb": mb(2),
        "runs_pending_due_pages": row.get::<_, f64>(3),
        "runs_running_pages": row.get::<_, f64>(4),
        "counters": {
            "n_live_tup": n(5), "n_dead_tup": n(6), "n_tup_ins": n(7), "n_tup_upd": n(8),
            "n_tup_hot_upd": n(9), "n_tup_del": n(10), "autovacuum_count": n(11),
            "vacuum_count": n(12), "autoanalyze_count": n(13),
        },
        "last_autovacuum": row.get::<_, Option<String>>(14),
    }))
}

/// The prune statements of the window: how many, how long each took.
async fn prune_statements(cluster: &Cluster, db: &Db) -> Result<Value> {
    let first = sisyphus::db::q::RUNS_PRUNE.lines().next().unwrap_or("");
    let row = cluster
        .admin
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(rows), 0)::bigint,
                    coalesce(sum(total_exec_time), 0), coalesce(max(max_exec_time), 0),
                    coalesce(min(min_exec_time), 0),
                    coalesce(sum(shared_blks_hit + shared_blks_read), 0)::bigint
               FROM pg_stat_statements WHERE dbid = $1 AND starts_with(query, $2)",
            &[&db.oid, &first],
        )
        .await?;
    let calls = row.get::<_, i64>(0);
    Ok(json!({
        "calls": calls,
        "rows": row.get::<_, i64>(1),
        "total_ms": round(row.get::<_, f64>(2), 1),
        "mean_ms": round(row.get::<_, f64>(2) / calls.max(1) as f64, 2),
        "min_ms": round(row.get::<_, f64>(4), 2),
        "max_ms": round(row.get::<_, f64>(3), 2),
        "buffers_per_call": round(row.get::<_, i64>(5) as f64 / calls.max(1) as f64, 1),
    }))
}

/// EXPLAIN (ANALYZE, BUFFERS) of the claim as g1 sends it (pool `default`, 16 free slots),
/// rolled back: its time, buffers, and the plan's lines.
pub async fn explain_claim(client: &Client) -> Result<Value> {
    let sql = sisyphus::db::q::RUNS_CLAIM
        .replace("$1", "'g1'")
        .replace("$2", "ARRAY['default']")
        .replace("$3", "16");
    client.batch_execute("BEGIN").await?;
    let rows = client
        .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"), &[])
        .await;
    client.batch_execute("ROLLBACK").await?;
    let lines: Vec<String> = rows?.iter().map(|r| r.get(0)).collect();
    Ok(json!(lines))
}

/// The autovacuums of `sisy.runs` in database `dbname` that the server logged (the scenario
/// sets `log_autovacuum_min_duration = 0` on the table), in order: when each ended, its
/// index scans (0 when bypassed), the line saying why the index pass ran or was bypassed,
/// what `runs_pending_due` had, buffers, and its duration.
pub fn autovacuums(log_path: &std::path::Path, dbname: &str) -> Vec<Value> {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    // `LOG:`: the same words open the context of a cancelled autovacuum's error.
    let head = format!("LOG:  automatic vacuum of table \"{dbname}.sisy.runs\"");
    let mut found = Vec::new();
    let mut lines = log.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(at) = line.find(&head) else {
            continue;
        };
        // The message's other lines start with a tab.
        let mut body = vec![line[at + "LOG:  ".len()..].to_string()];
        while let Some(next) = lines.peek() {
            if !next.starts_with('\t') {
                break;
            }
            body.push(next.trim().to_string());
            lines.next();
        }
        let find = |prefix: &str| body.iter().find(|l| l.starts_with(prefix)).cloned();
        let elapsed = body
            .iter()
            .find_map(|l| l.split("elapsed: ").nth(1))
            .and_then(|t| t.trim_end_matches(" s").trim().parse::<f64>().ok());
        found.push(json!({
            // The log line's prefix (`%m`): the end of the vacuum.
            "ended": line.get(..23),
            "elapsed_s": elapsed,
            "index_scans": body[0].split("index scans: ").nth(1),
            "heap_pages": find("pages:"),
            "tuples": find("tuples:"),
            "index_pass": find("index scan"),
            "runs_pending_due": find("index \"runs_pending_due\""),
            "buffer_usage": find("buffer usage:"),
        }));
    }
    found
}

//! Scenario history: history at fleet volume (SPEC §9). At 10 million finished runs a day,
//! do retention and autovacuum hold `sisy.runs` steady without slowing claims?
//!
//! Two real `sisy guardian` processes (direct connections, shipped defaults, capacity 16,
//! `history_retention = "1d"`) run a steady load of [`JOBS`] jobs `* * * * * *` (`true`,
//! jitter 1 s): 116 runs a second, 10 million a day. The same load is measured in three
//! windows of [`WINDOW`] after a warm-up of [`WARMUP`] each:
//! - `small`: on a fresh database (a small table, vacuumed often by autovacuum);
//! - `full`: after [`ROWS`] finished runs were loaded, spread evenly over the 24 h 10 min
//!   before the load started (so some are already past the retention), and VACUUM ANALYZE.
//!   The guardians are restarted after the load so that their first housekeeping pass (a
//!   minute after start, then every ten minutes) falls inside the window: the real guardian
//!   prunes what is past the retention while the load runs;
//! - `before_autovacuum`: the state of the table just before autovacuum comes round again.
//!   Autovacuum vacuums `sisy.runs` once its dead versions pass the threshold plus the
//!   scale factor times its rows (`autovacuum_vacuum_threshold`, `…_scale_factor`: the
//!   table's own storage parameters, migration 0017, else the server's), and it looks at a database at most once per
//!   `autovacuum_naptime`: the longest cycle is the time the load takes to leave that many
//!   dead versions (at the rate the `full` window measured) plus one naptime. Until then
//!   every run that went through pending and running leaves dead entries in the partial
//!   indexes the claim and the tick read. After a VACUUM, with autovacuum off for the table,
//!   runs are added at once (inserted pending, made running, then finished, in one
//!   transaction that nobody sees pending) in the number that, with what the load adds
//!   during the warm-up and half the window, makes one longest cycle: the window's middle
//!   is the cycle's end. Then autovacuum is on again;
//! - `cycle`: the real load under the real autovacuum. After autovacuum has vacuumed what
//!   was added, the window runs from the end of that vacuum to the end of the
//!   [`CYCLES`]th vacuum after it (bounded by [`CYCLE_BOUND`]): whole cycles. The server
//!   logs every autovacuum of the table (`log_autovacuum_min_duration = 0` on it), and the
//!   scenario reports their durations and whether each cleaned the indexes.
//!
//! Per window: dispatch latency (`started_at − due_at` of the load's runs due in it; per
//! 10 s slice too, and the slowest runs), the housekeeping passes that ended in it (from the
//! guardians' logs), the claim's, tick's, finish's and insert's mean time and buffers from
//! `pg_stat_statements`, the table's size and `pg_stat_user_tables` counters before and
//! after, rows past the retention before and after, the prune statements, and EXPLAIN
//! (ANALYZE, BUFFERS) of the claim after the window (in a transaction rolled back). At the
//! end, one timed VACUUM (what autovacuum then does, unthrottled).
//!
//! The synthetic history is loaded with `session_replication_role = replica` (no row
//! triggers: a day-old state change has nobody to notify). `SISY_BENCH_HISTORY_ROWS`
//! changes [`ROWS`] for a quick run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::harness::{self, Cluster, Db, PRODUCTION, progress, round, target};
use crate::util::Guardian;

mod window;
use window::{Until, Window, autovacuum_count, autovacuums, explain_claim, sizes, window};

/// 116 occurrences a second: 10,022,400 a day.
const JOBS: i64 = 116;
const GUARDIANS: usize = 2;
const ROWS: i64 = 10_000_000;
/// The statements the history is loaded in (two connections take them in turn).
const CHUNKS: i64 = 10;
const RETENTION: &str = "1d";
const RETENTION_SECS: f64 = 86_400.0;
/// The loaded history spans the retention and ten minutes more: one housekeeping
/// interval's worth of runs is past the retention when the load starts.
const SPAN_SECS: f64 = 86_400.0 + 600.0;
const WARMUP: Duration = Duration::from_secs(20);
const WINDOW: Duration = Duration::from_secs(60);
/// The autovacuums the `cycle` window spans, and its bound.
const CYCLES: i64 = 2;
const CYCLE_BOUND: Duration = Duration::from_secs(480);

/// A database-clock instant.
type Instant_ = chrono::DateTime<chrono::Utc>;

pub async fn run(cluster: &Cluster) -> Result<Value> {
    let rows = match std::env::var("SISY_BENCH_HISTORY_ROWS") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= CHUNKS)
            .with_context(|| {
                format!("SISY_BENCH_HISTORY_ROWS: {v:?} is not a row count of at least {CHUNKS}")
            })?,
        Err(_) => ROWS,
    };
    let db = cluster.database().await?;
    // Every autovacuum of the table in the server's log: when, how long, its index pass.
    db.client
        .batch_execute("ALTER TABLE sisy.runs SET (log_autovacuum_min_duration = 0)")
        .await?;
    let extra = format!("{PRODUCTION}history_retention = \"{RETENTION}\"\n");
    let mut guardians = harness::fleet(&db, GUARDIANS, &extra).await;
    // The loaded history ends where the load begins: no loaded run shares an occurrence
    // with a real one.
    let history_end: Instant_ = db.client.query_one("SELECT now()", &[]).await?.get(0);
    db.client
        .execute(
            "INSERT INTO sisy.jobs (name, command, schedule, jitter)
             SELECT format('history-%s', i), 'true', '* * * * * *', interval '1 second'
               FROM generate_series(1, $1::bigint) i",
            &[&JOBS],
        )
        .await?;

    progress(&format!(
        "history: small table, warm-up {} s and window {} s",
        WARMUP.as_secs(),
        WINDOW.as_secs()
    ));
    tokio::time::sleep(WARMUP).await;
    let small = window(cluster, &db, &guardians, Until::Elapsed(WINDOW)).await?;
    let loaded = reload(&db, &mut guardians, rows, history_end).await?;
    let full = window(cluster, &db, &guardians, Until::Elapsed(WINDOW)).await?;
    let (mut churn, before_autovacuum) = before_autovacuum(cluster, &db, &guardians, &full).await?;
    let (mut cycle_setup, cycle) = cycle(cluster, &db, &guardians).await?;
    let vacuum = vacuum(&db).await?;
    let prune_failures: usize = guardians
        .iter()
        .map(|g| g.log().matches("history pruning failed").count())
        .sum();
    for g in &mut guardians {
        let _ = tokio::task::block_in_place(|| g.stop());
    }
    churn["window"] = before_autovacuum.to_json();
    cycle_setup["window"] = cycle.to_json();
    Ok(json!({
        "setup": {
            "guardians": format!("{GUARDIANS} sisy guardian, direct connections, heartbeat 5 s, lease 30 s, capacity 16, history_retention = \"{RETENTION}\""),
            "load": format!("{JOBS} jobs `* * * * * *` running `true`, jitter 1 s: {JOBS} occurrences/s, {} a day", JOBS * 86_400),
            "windows": format!("warm-up {} s, window {} s each", WARMUP.as_secs(), WINDOW.as_secs()),
            "history": format!("{rows} finished runs of the load's jobs (succeeded, 1 in 50 failed; hosts g1/g2; output of 3 bytes), finished_at spread evenly over the {:.0} s before the load started; loaded without row triggers", SPAN_SECS),
        },
        "small": small.to_json(),
        "history_load": loaded,
        "full": full.to_json(),
        "before_autovacuum": churn,
        "cycle": cycle_setup,
        "vacuum": vacuum,
        "autovacuums_of_runs": autovacuums(&cluster.server().log_path, &db.test.name),
        "prune_failures_logged": prune_failures,
        "targets": targets(&small, &full, &before_autovacuum, &cycle),
    }))
}

/// Stops the load and the guardians, loads `rows` finished runs and vacuums, then starts
/// the guardians again and resumes the load: their first housekeeping pass, a minute after
/// start, falls inside the next window.
async fn reload(
    db: &Db,
    guardians: &mut [Guardian],
    rows: i64,
    history_end: Instant_,
) -> Result<Value> {
    db.client
        .execute(
            "UPDATE sisy.jobs SET suspended = true WHERE name LIKE 'history-%'",
            &[],
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for g in guardians.iter_mut() {
        let _ = tokio::task::block_in_place(|| g.stop());
    }
    progress(&format!("history: loading {rows} finished runs"));
    let loaded = load_history(db, rows, history_end).await?;
    progress("history: VACUUM ANALYZE");
    let began = Instant::now();
    db.client.batch_execute("VACUUM ANALYZE sisy.runs").await?;
    let vacuum_analyze_s = round(began.elapsed().as_secs_f64(), 1);
    let size_after = sizes(&db.client).await?;

    progress("history: full table, guardians restarted, pruning in the window");
    for g in guardians.iter_mut() {
        g.restart();
    }
    let restarted = Instant::now();
    harness::wait_for(
        &db.client,
        "the guardians to be live again",
        &format!("SELECT count(*) >= {GUARDIANS} FROM sisy.hosts WHERE lease_until > now()"),
        Duration::from_millis(100),
        Duration::from_secs(30),
    )
    .await?;
    db.client
        .execute(
            "UPDATE sisy.jobs SET suspended = false WHERE name LIKE 'history-%'",
            &[],
        )
        .await?;
    tokio::time::sleep(WARMUP.saturating_sub(restarted.elapsed())).await;
    Ok(json!({
        "rows": rows,
        "load": loaded,
        "vacuum_analyze_s": vacuum_analyze_s,
        "size_after": size_after,
    }))
}

/// Measures a window at the end of the longest autovacuum cycle the table's settings allow
/// (see the module's doc): how long that cycle is, how many runs were added, and why.
async fn before_autovacuum(
    cluster: &Cluster,
    db: &Db,
    guardians: &[Guardian],
    full: &Window,
) -> Result<(Value, Window)> {
    // Dead versions per run, as the full window's counters give them: each update leaves
    // one, each run is deleted once by pruning.
    let runs = full.table_delta("n_tup_ins").max(1.0);
    let dead_per_run =
        (full.table_delta("n_tup_upd") + full.table_delta("n_tup_del").min(runs)) / runs;
    let runs_per_s = full.runs_per_s.max(1.0);
    let row = db
        .client
        .query_one(
            "WITH o AS (SELECT option_name, option_value
                          FROM pg_class c, pg_options_to_table(c.reloptions)
                         WHERE c.oid = 'sisy.runs'::regclass)
             SELECT coalesce((SELECT option_value FROM o WHERE option_name = 'autovacuum_vacuum_threshold'),
                             current_setting('autovacuum_vacuum_threshold'))::float8,
                    coalesce((SELECT option_value FROM o WHERE option_name = 'autovacuum_vacuum_scale_factor'),
                             current_setting('autovacuum_vacuum_scale_factor'))::float8,
                    (SELECT reltuples::float8 FROM pg_class WHERE oid = 'sisy.runs'::regclass),
                    (SELECT setting::float8 FROM pg_settings WHERE name = 'autovacuum_naptime')",
            &[],
        )
        .await?;
    let (base, scale, reltuples, naptime_s): (f64, f64, f64, f64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let threshold = base + scale * reltuples.max(0.0);
    let to_threshold_s = threshold / (dead_per_run.max(1.0) * runs_per_s);
    let cycle_s = to_threshold_s + naptime_s;
    // What the load adds while this window warms up and until its middle.
    let meanwhile_s = WARMUP.as_secs_f64() + WINDOW.as_secs_f64() / 2.0;
    let added_s = (cycle_s - meanwhile_s).max(0.0);
    let churn = (added_s * runs_per_s).round() as i64;
    progress(&format!(
        "history: longest autovacuum cycle {cycle_s:.0} s ({threshold:.0} dead versions, {to_threshold_s:.0} s, and a naptime of {naptime_s:.0} s); VACUUM, then {churn} runs' worth of dead entries"
    ));
    let began = Instant::now();
    // Two statements: VACUUM cannot run in the implicit transaction of a batch.
    db.client.batch_execute("VACUUM sisy.runs").await?;
    db.client
        .batch_execute("ALTER TABLE sisy.runs SET (autovacuum_enabled = false)")
        .await?;
    let vacuum_s = round(began.elapsed().as_secs_f64(), 1);
    let began = Instant::now();
    add_churn(db, churn, added_s).await?;
    let churn_s = round(began.elapsed().as_secs_f64(), 1);
    tokio::time::sleep(WARMUP).await;
    let measured = window(cluster, db, guardians, Until::Elapsed(WINDOW)).await;
    db.client
        .batch_execute("ALTER TABLE sisy.runs RESET (autovacuum_enabled)")
        .await?;
    Ok((
        json!({
            "autovacuum_vacuum_threshold": base,
            "autovacuum_vacuum_scale_factor": scale,
            "reltuples": reltuples,
            "autovacuum_naptime_s": naptime_s,
            "autovacuum_threshold_dead_tuples": threshold.round(),
            "dead_versions_per_run": round(dead_per_run, 2),
            "to_threshold_s": round(to_threshold_s, 1),
            "longest_cycle_s": round(cycle_s, 1),
            "vacuum_before_s": vacuum_s,
            "runs_added": churn,
            "runs_added_over_s": round(added_s, 1),
            "runs_added_s": churn_s,
            "window_middle_at_cycle_s": round(added_s + meanwhile_s, 1),
        }),
        measured?,
    ))
}

/// The real load under the real autovacuum: waits for the vacuum of what
/// [`before_autovacuum`] added, then measures [`CYCLES`] whole cycles.
async fn cycle(cluster: &Cluster, db: &Db, guardians: &[Guardian]) -> Result<(Value, Window)> {
    progress(&format!(
        "history: real autovacuum: the vacuum of the added runs, then {CYCLES} cycles (at most {} s)",
        CYCLE_BOUND.as_secs()
    ));
    let first = autovacuum_count(&db.client).await?;
    let waited = harness::wait_for(
        &db.client,
        "autovacuum to vacuum sisy.runs",
        &format!(
            "SELECT autovacuum_count > {first} FROM pg_stat_user_tables WHERE relid = 'sisy.runs'::regclass"
        ),
        Duration::from_millis(200),
        CYCLE_BOUND,
    )
    .await?;
    let measured = window(
        cluster,
        db,
        guardians,
        Until::Autovacuums(CYCLES, CYCLE_BOUND),
    )
    .await?;
    Ok((
        json!({"first_autovacuum_after_s": round(waited.as_secs_f64(), 1)}),
        measured,
    ))
}

/// One timed VACUUM: what autovacuum would do next (it is throttled; this is not).
async fn vacuum(db: &Db) -> Result<Value> {
    progress("history: VACUUM (what autovacuum would do next)");
    let before = sizes(&db.client).await?;
    let began = Instant::now();
    db.client.batch_execute("VACUUM sisy.runs").await?;
    let seconds = round(began.elapsed().as_secs_f64(), 1);
    Ok(json!({
        "seconds": seconds,
        "note": "a manual VACUUM, unthrottled; autovacuum sleeps autovacuum_vacuum_cost_delay per cost_limit of work",
        "before": before,
        "after": sizes(&db.client).await?,
        "claim_plan_after": explain_claim(&db.client).await?,
    }))
}

/// The figures against SPEC §9's targets.
fn targets(small: &Window, full: &Window, before_autovacuum: &Window, cycle: &Window) -> Value {
    let claim = |w: &Window| w.mean_ms("runs_claim");
    let claim_ratio_full = round(claim(full) / claim(small).max(1e-9), 2);
    let claim_ratio_churn = round(claim(before_autovacuum) / claim(small).max(1e-9), 2);
    let claim_ratio_cycle = round(claim(cycle) / claim(small).max(1e-9), 2);
    let p99 = |w: &Window| w.latency["p99_ms"].as_f64().unwrap_or(f64::MAX);
    let p99_limit = (p99(small) * 1.2).max(p99(small) + 20.0);
    let deleted = full.table_delta("n_tup_del");
    let inserted = full.table_delta("n_tup_ins");
    let backlog_fell = full.over_retention_after < full.over_retention_before;
    json!({
        "claim_mean_ms_full_over_small": claim_ratio_full,
        "claims_not_slower_full": target(claim_ratio_full, 1.2, true, "claim mean exec time with the full table (pruning in the window) within 1.2x of the small table's"),
        "claim_mean_ms_before_autovacuum_over_small": claim_ratio_churn,
        "claims_not_slower_before_autovacuum": target(claim_ratio_churn, 1.2, true, "claim mean exec time just before autovacuum comes round within 1.2x of the small table's"),
        "claim_mean_ms_cycle_over_small": claim_ratio_cycle,
        "claims_not_slower_cycle": target(claim_ratio_cycle, 1.2, true, "claim mean exec time across whole autovacuum cycles of the real load within 1.2x of the small table's"),
        "dispatch_p99_limit_ms": round(p99_limit, 1),
        "dispatch_p99_full": target(p99(full), p99_limit, true, "dispatch p99 with the full table within 1.2x (or 20 ms) of the small table's"),
        "dispatch_p99_before_autovacuum": target(p99(before_autovacuum), p99_limit, true, "dispatch p99 just before autovacuum within 1.2x (or 20 ms) of the small table's"),
        "dispatch_p99_cycle": target(p99(cycle), p99_limit, true, "dispatch p99 across whole autovacuum cycles within 1.2x (or 20 ms) of the small table's"),
        "claim_buffers_per_call": {
            "small": round(small.buffers_per_call("runs_claim"), 1),
            "full": round(full.buffers_per_call("runs_claim"), 1),
            "before_autovacuum": round(before_autovacuum.buffers_per_call("runs_claim"), 1),
            "cycle": round(cycle.buffers_per_call("runs_claim"), 1),
        },
        "rows_deleted_in_window": deleted,
        "rows_inserted_in_window": inserted,
        "prune_keeps_up": json!({
            "target": "pruning deletes at least what the load inserts over the window, or the backlog past the retention falls",
            "met": deleted >= inserted || backlog_fell,
        }),
    })
}

/// Loads `rows` finished runs of the load's jobs, finished evenly over the [`SPAN_SECS`]
/// before `end`, in [`CHUNKS`] statements over two connections.
async fn load_history(db: &Db, rows: i64, end: Instant_) -> Result<Value> {
    let began = Instant::now();
    let per_chunk = rows / CHUNKS;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let client = harness::connect(&db.test.url).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            client
                .batch_execute("SET session_replication_role = replica")
                .await?;
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= CHUNKS {
                    return anyhow::Ok(());
                }
                let from = k * per_chunk;
                let to = if k == CHUNKS - 1 {
                    rows
                } else {
                    from + per_chunk
                } - 1;
                client
                    .execute(LOAD, &[&from, &to, &rows, &end, &SPAN_SECS])
                    .await?;
                progress(&format!("history: loaded chunk {} of {CHUNKS}", k + 1));
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = began.elapsed().as_secs_f64();
    Ok(json!({
        "seconds": round(secs, 1),
        "rows_per_s": round(rows as f64 / secs, 0),
        "statements": CHUNKS,
        "connections": 2,
    }))
}

/// Row i of n: job i mod 116, finished at end − span + i × span / n; its run took 5 ms and
/// started 3 ms after its due time.
const LOAD: &str = "
INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt, due_at, deadline,
                       state, host, pid, claimed_at, started_at, finished_at, heartbeat_at,
                       exit_code, output, output_bytes, created_at)
SELECT j.ids[1 + i % cardinality(j.ids)], j.names[1 + i % cardinality(j.ids)], 'default',
       t.s, 'schedule', 1, t.s, t.s + interval '5 minutes',
       CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN i % 2 = 0 THEN 'g1' ELSE 'g2' END, 1000 + (i % 30000)::int,
       t.s + interval '2 ms', t.s + interval '3 ms', t.s + interval '8 ms', t.s + interval '3 ms',
       CASE WHEN i % 50 = 0 THEN 1 ELSE 0 END,
       CASE WHEN i % 50 = 0 THEN 'no\n' ELSE 'ok\n' END, 3,
       t.s - interval '1 s'
  FROM (SELECT array_agg(id ORDER BY id) AS ids, array_agg(name ORDER BY id) AS names
          FROM sisy.jobs WHERE name LIKE 'history-%') j,
       generate_series($1::bigint, $2::bigint) i,
       LATERAL (SELECT $4::timestamptz - make_interval(secs => $5)
                       + make_interval(secs => $5 * i / $3::bigint) - interval '8 ms' AS s) t
";

/// Adds `n` runs that went through pending and running in the `cycle_s` seconds before
/// now and finished: the dead entries part of an autovacuum cycle leaves in the table and
/// its indexes. One transaction: no guardian ever sees them pending.
async fn add_churn(db: &Db, n: i64, cycle_s: f64) -> Result<()> {
    let client = harness::connect(&db.test.url).await?;
    client
        .batch_execute("SET session_replication_role = replica; BEGIN")
        .await?;
    let low: i64 = client
        .query_one("SELECT coalesce(max(id), 0) FROM sisy.runs", &[])
        .await?
        .get(0);
    // A job's occurrences 116 / n of the cycle apart (about a second), between whole
    // seconds, where the load's are: a rare collision is skipped.
    client
        .execute(
            "INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at,
                                   deadline, state, created_at)
             SELECT j.ids[1 + i % cardinality(j.ids)], j.names[1 + i % cardinality(j.ids)],
                    'default', t.s, 'schedule', t.s, t.s + interval '5 minutes', 'pending', t.s
               FROM (SELECT array_agg(id ORDER BY id) AS ids, array_agg(name ORDER BY id) AS names
                       FROM sisy.jobs WHERE name LIKE 'history-%') j,
                    generate_series(0, $1::bigint - 1) i,
                    LATERAL (SELECT now() - make_interval(secs => $2)
                                    + make_interval(secs => $2 * i / $1::bigint) AS s) t
             ON CONFLICT ON CONSTRAINT runs_occurrence_key DO NOTHING",
            &[&n, &cycle_s],
        )
        .await?;
    let mine = "id > $1 AND xmin = pg_current_xact_id()::xid";
    client
        .execute(
            &format!(
                "UPDATE sisy.runs SET state = 'running', host = 'g1', claimed_at = due_at,
                        heartbeat_at = due_at, started_at = due_at, pid = 1000 WHERE {mine}"
            ),
            &[&low],
        )
        .await?;
    client
        .execute(
            &format!(
                "UPDATE sisy.runs SET state = 'succeeded', exit_code = 0, output = 'ok\n',
                        output_bytes = 3, finished_at = due_at + interval '5 ms' WHERE {mine}"
            ),
            &[&low],
        )
        .await?;
    client.batch_execute("COMMIT").await?;
    Ok(())
}

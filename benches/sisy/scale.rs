//! Scenario 3, scale: the steady load of the latency scenario (20 occurrences per second,
//! 2 guardians) on a database of 100 jobs, then on one of 100,000 jobs and 1,000,000
//! finished runs, with latency and database work per tick compared; EXPLAIN ANALYZE of the
//! guardians' statements on the large one; its size per million finished runs; and how long
//! `sisyphus::service::reaper::prune` takes to prune the million.
//!
//! The dormant jobs are daily jobs at random times outside the next hour (none falls due
//! during the run); a tenth of them are in a pool no guardian serves, overdue by a day, as
//! they are after a day without such a guardian (due, but never this fleet's work). The history rows are shaped like recorded runs of a `true` job (empty
//! output) and are bulk-loaded with triggers off (a million `sisy_events` notifications
//! would measure NOTIFY, not the schema); the load is followed by `VACUUM ANALYZE`, which
//! autovacuum would do next. Likewise the jobs table once the guardians have seeded it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use crate::harness::{self, Cluster, Db, PRODUCTION, progress, round, target};
use crate::latency::{self, Load, STEADY_JOBS};

const SMALL: usize = 100;
const LARGE: usize = 100_000;
const HISTORY: i64 = 1_000_000;
/// The guardians keep the history while measured; the prune is timed on its own.
const GUARDIAN: &str = "history_retention = \"90d\"\n";

pub async fn run(cluster: &Cluster) -> Result<Value> {
    progress("scale: 100 jobs");
    let small_db = cluster.database().await?;
    add_dormant(&small_db, SMALL - STEADY_JOBS).await?;
    let small = measure(cluster, &small_db).await?;

    progress("scale: 100,000 jobs and 1,000,000 finished runs");
    let db = cluster.database().await?;
    add_dormant(&db, LARGE - STEADY_JOBS).await?;
    let before = sizes(&db).await?;
    let loaded = Instant::now();
    load_history(&db).await?;
    let load_s = loaded.elapsed().as_secs_f64();
    let after = sizes(&db).await?;
    let large = measure(cluster, &db).await?;

    let ratio = |path: &[&str]| {
        let get = |v: &Value| path.iter().fold(v, |v, k| &v[k]).as_f64().unwrap_or(0.0);
        round(get(&large) / get(&small).max(1e-9), 2)
    };
    let p50 = ratio(&["latency", "p50_ms"]);
    let p99 = ratio(&["latency", "p99_ms"]);
    let work = ratio(&["db", "exec_ms_per_tick"]);
    let buffers = ratio(&["db", "buffers_per_tick"]);

    progress("scale: pruning a million finished runs");
    let prune = prune(&db).await?;
    let mb = |bytes: i64| round(bytes as f64 / 1048576.0 * (1e6 / HISTORY as f64), 1);
    Ok(json!({
        "guardians": 2,
        "steady_jobs": STEADY_JOBS,
        "small": small,
        "large": large,
        "large_over_small": {
            "latency_p50": p50,
            "latency_p99": p99,
            "db_exec_ms_per_tick": work,
            "db_buffers_per_tick": buffers,
            "latency": target(p99.max(p50), 1.2, true, "latency within 20 % of the 100-job figures"),
            "db_work": target(work.max(buffers), 1.2, true, "DB work per tick within 20 % of the 100-job figures"),
        },
        "history_load_s": round(load_s, 1),
        "mb_per_million_finished_runs": {
            "table": mb(after.0 - before.0),
            "indexes": mb(after.1 - before.1),
            "toast": mb(after.2 - before.2),
            "total": mb((after.0 + after.1 + after.2) - (before.0 + before.1 + before.2)),
            "output": "empty (a `true` job): output adds its own length, compressed above 2 kB",
        },
        "prune": prune,
    }))
}

/// The steady load on `db` with a fresh fleet, plus EXPLAIN ANALYZE while it runs.
async fn measure(cluster: &Cluster, db: &Db) -> Result<Value> {
    let jobs: i64 = db
        .client
        .query_one("SELECT count(*) FROM sisy.jobs", &[])
        .await?
        .get(0);
    let runs: i64 = db
        .client
        .query_one("SELECT count(*) FROM sisy.runs", &[])
        .await?
        .get(0);
    let guardians = harness::fleet(db, 2, &format!("{PRODUCTION}{GUARDIAN}")).await;
    let seeded = harness::wait_for(
        &db.client,
        "every job to get its next_due",
        "SELECT NOT EXISTS (SELECT 1 FROM sisy.jobs WHERE next_due IS NULL AND schedule_error IS NULL)",
        Duration::from_millis(100),
        Duration::from_secs(600),
    )
    .await?;
    // Seeding updates every job: until autovacuum has been by (within its minute of naptime)
    // the index jobs_unseen holds one dead entry per job, which the tick's `unseen` probe
    // steps over (0.4 ms, 275 buffers a tick), and the statistics still count the jobs
    // unseen. The window measures the steady state after that, not the first minute.
    db.client
        .batch_execute(
            "UPDATE sisy.jobs SET next_due = now() - interval '1 day' WHERE pool = 'stranded'",
        )
        .await?;
    db.client.batch_execute("VACUUM ANALYZE sisy.jobs").await?;
    let m = latency::steady(cluster, db, &guardians, &Load::default()).await?;
    let explain = explain(db, jobs).await?;
    Ok(json!({
        "jobs": jobs + STEADY_JOBS as i64,
        "runs_before": runs,
        "seed_all_jobs_s": round(seeded.as_secs_f64(), 1),
        "latency": m.latency,
        "phases": m.phases,
        "not_started": m.not_started,
        "db": m.db,
        "explain": explain,
    }))
}

/// Daily jobs at random times that stay clear of the next hour; every tenth in the pool
/// `stranded`, which no guardian serves.
async fn add_dormant(db: &Db, n: usize) -> Result<()> {
    db.client
        .execute(
            "INSERT INTO sisy.jobs (name, command, pool, schedule)
             SELECT format('dormant-%s', i), format('/usr/local/bin/task --id %s', i),
                    CASE WHEN i % 10 = 0 THEN 'stranded' ELSE 'default' END,
                    format('%s %s * * *', (random() * 59)::int,
                           (extract(hour FROM now() AT TIME ZONE 'UTC')::int + 2 + (random() * 21)::int) % 24)
               FROM generate_series(1, $1::int) i",
            &[&(n as i32)],
        )
        .await?;
    Ok(())
}

/// A million finished runs of the dormant jobs, 31 to 60 days old.
async fn load_history(db: &Db) -> Result<()> {
    db.client
        .batch_execute(&format!(
            "SET session_replication_role = replica;
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline,
                                    state, host, pid, claimed_at, started_at, finished_at,
                                    heartbeat_at, exit_code, output, output_bytes, created_at)
             SELECT j.id, j.name, j.pool, x.t, 'schedule', x.t, x.t + j.ttl, 'succeeded',
                    'g' || (1 + i % 2), 100000 + i % 30000, x.t + interval '3 ms',
                    x.t + interval '4 ms', x.t + interval '9 ms', x.t + interval '4 ms', 0, '', 0, x.t
               FROM generate_series(0, {last}) i
               CROSS JOIN LATERAL (SELECT now() - interval '60 days' + i * interval '2.5 seconds' AS t) x
               JOIN sisy.jobs j ON j.name = format('dormant-%s', 1 + i % {dormant});
             SET session_replication_role = DEFAULT;",
            last = HISTORY - 1,
            dormant = LARGE - STEADY_JOBS,
        ))
        .await?;
    // Each on its own: VACUUM cannot run inside the implicit transaction of a batch.
    for table in ["sisy.runs", "sisy.jobs"] {
        db.client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    Ok(())
}

/// (table, indexes, toast) bytes of sisy.runs.
async fn sizes(db: &Db) -> Result<(i64, i64, i64)> {
    let row = db
        .client
        .query_one(
            "SELECT pg_relation_size('sisy.runs'), pg_indexes_size('sisy.runs'),
                    pg_total_relation_size('sisy.runs') - pg_relation_size('sisy.runs')
                      - pg_indexes_size('sisy.runs')",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

async fn prune(db: &Db) -> Result<Value> {
    let pool = sisyphus::db::pool(&db.test.url, 2)?;
    let began = Instant::now();
    let outcome = sisyphus::service::reaper::prune(&pool, Duration::from_secs(30 * 86400)).await?;
    let secs = began.elapsed().as_secs_f64();
    Ok(json!({
        "deleted": outcome.runs,
        "seconds": round(secs, 1),
        "rows_per_s": round(outcome.runs as f64 / secs, 0),
        "statements": outcome.runs.div_ceil(sisyphus::service::reaper::BATCH as u64),
    }))
}

/// EXPLAIN (ANALYZE, BUFFERS) of the per-tick statements, each in a transaction rolled
/// back. Execution time and buffers go into the figures, the plans into a file.
async fn explain(db: &Db, jobs: i64) -> Result<Value> {
    use sisyphus::db::q;
    let pools = vec!["default".to_string()];
    let (host, none_i64, none_pid) = ("g1", Vec::<i64>::new(), Vec::<Option<i32>>::new());
    let statements: Vec<(&str, &str, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>)> = vec![
        ("runs_tick", q::RUNS_TICK, vec![&pools, &host]),
        ("jobs_due", q::JOBS_DUE, vec![&pools, &200i64]),
        ("jobs_unseen", q::JOBS_UNSEEN, vec![&200i64]),
        ("runs_claim", q::RUNS_CLAIM, vec![&host, &pools, &16i64]),
        (
            "heartbeat",
            q::HEARTBEAT,
            vec![&host, &30f64, &16i32, &none_i64, &none_pid, &pools, &true],
        ),
        (
            "runs_prune",
            q::RUNS_PRUNE,
            vec![&(90f64 * 86400.0), &1000i64],
        ),
        ("hosts_prune", q::HOSTS_PRUNE, vec![&(90f64 * 86400.0)]),
    ];
    let mut figures = json!({});
    let mut text = String::new();
    for (name, sql, params) in statements {
        // Each in its own rolled-back transaction: the tick and the claim write.
        db.client.batch_execute("BEGIN").await?;
        let plan: Value = db
            .client
            .query_one(
                &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"),
                &params,
            )
            .await?
            .get(0);
        db.client.batch_execute("ROLLBACK; BEGIN").await?;
        let rows = db
            .client
            .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"), &params)
            .await?;
        db.client.batch_execute("ROLLBACK").await?;
        let top = &plan[0];
        let node = &top["Plan"];
        let buffers = node["Shared Hit Blocks"].as_i64().unwrap_or(0)
            + node["Shared Read Blocks"].as_i64().unwrap_or(0);
        figures[name] = json!({
            "execution_ms": round(top["Execution Time"].as_f64().unwrap_or(0.0), 3),
            "planning_ms": round(top["Planning Time"].as_f64().unwrap_or(0.0), 3),
            "buffers": buffers,
        });
        text.push_str(&format!("== {name}\n"));
        for r in rows {
            text.push_str(r.get::<_, &str>(0));
            text.push('\n');
        }
    }
    let dir = PathBuf::from("target/sisy-bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("explain-{jobs}-jobs.txt"));
    std::fs::write(&path, text)?;
    figures["plans"] = json!(path.display().to_string());
    Ok(figures)
}

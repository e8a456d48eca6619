//! Scenario fanout: a member with `foreach` over 10,000 items.
//!
//! - Materialising: the statement that records the upstream's end and decides the fan-out
//!   member inserts its 10,000 item runs (driven by SQL, no guardians): the median of three
//!   fresh databases (the first statement of a database also warms its caches), against the
//!   target of 1 s.
//! - Draining: 2 guardians of capacity 16 run the 10,000 items of `true` (the root writes the
//!   list as its result); the rate from the first item's start to the last item's end,
//!   against 10,000 plain runs of `true` queued at once on the same guardians (as the
//!   throughput scenario queues them). Target: within 10 % of the plain rate.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use crate::harness::{self, Cluster, Db, PRODUCTION, progress, round, target};
use crate::util::Guardian;

const ITEMS: i64 = 10_000;
const GUARDIANS: usize = 2;
const CAPACITY: usize = 16;
const MATERIALISE_SAMPLES: usize = 3;

pub async fn run(cluster: &Cluster) -> Result<Value> {
    progress("fanout: materialising 10,000 items");
    let mut samples = Vec::with_capacity(MATERIALISE_SAMPLES);
    for _ in 0..MATERIALISE_SAMPLES {
        samples.push(materialise(cluster).await?);
    }
    samples.sort_by(f64::total_cmp);
    let materialise_ms = samples[samples.len() / 2];
    progress("fanout: draining 10,000 items, then 10,000 plain runs");
    let Drain {
        items_per_s,
        plain_per_s,
        items,
        plain,
    } = drain(cluster).await?;
    let ratio = items_per_s / plain_per_s;
    Ok(json!({
        "items": ITEMS,
        "materialise_ms": round(materialise_ms, 1),
        "materialise_samples_ms": samples.iter().map(|ms| round(*ms, 1)).collect::<Vec<_>>(),
        "materialise_target": target(materialise_ms, 1000.0, true, "all items materialised within 1 s"),
        "guardians": GUARDIANS,
        "capacity_per_guardian": CAPACITY,
        "items_per_s": round(items_per_s, 0),
        "plain_runs_per_s": round(plain_per_s, 0),
        "ratio": round(ratio, 3),
        "drain_target": target(ratio, 0.9, false, "items drain within 10 % of plain triggered runs"),
        "items_phase": items,
        "plain_phase": plain,
    }))
}

async fn flow(db: &Db, root_command: &str) -> Result<()> {
    db.client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('list', $1, 'allow'), ('join', 'true', 'allow')",
            &[&root_command],
        )
        .await?;
    db.client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, overlap, foreach) VALUES ('each', 'true', 'allow', '$.list[*]');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('each', 'list'), ('join', 'each');",
        )
        .await?;
    Ok(())
}

async fn materialise(cluster: &Cluster) -> Result<f64> {
    let db = cluster.database().await?;
    flow(&db, "true").await?;
    let root: i64 = db
        .client
        .query_one("SELECT sisy.trigger('list')", &[])
        .await?
        .get(0);
    db.client
        .execute(
            "UPDATE sisy.runs SET state = 'running', host = 'bench' WHERE id = $1",
            &[&root],
        )
        .await?;
    let began = Instant::now();
    db.client
        .execute(
            "UPDATE sisy.runs SET state = 'succeeded', finished_at = now(),
                    result = (SELECT jsonb_agg(i) FROM generate_series(1, $2::bigint) i)
              WHERE id = $1",
            &[&root, &ITEMS],
        )
        .await?;
    let took = began.elapsed().as_secs_f64() * 1000.0;
    let items: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE job_name = 'each'",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(items == ITEMS, "{items} items materialised");
    Ok(took)
}

/// The CPU a phase cost per run (guardians, their jobs, PostgreSQL) and its statements.
struct Window {
    guardians: Duration,
    jobs: Duration,
    postgres: Duration,
}

fn cpu(cluster: &Cluster, pids: &[i32]) -> Window {
    let (guardians, jobs) = pids
        .iter()
        .filter_map(|p| harness::proc_stat(*p))
        .fold((Duration::ZERO, Duration::ZERO), |(a, b), s| {
            (a + s.cpu, b + s.children_cpu)
        });
    Window {
        guardians,
        jobs,
        postgres: cluster.postgres_cpu(),
    }
}

async fn phase(
    cluster: &Cluster,
    db: &Db,
    pids: &[i32],
    before: Window,
    runs: f64,
) -> Result<Value> {
    let after = cpu(cluster, pids);
    let per_run_us = |d: Duration| round(d.as_secs_f64() * 1e6 / runs, 0);
    let statements = cluster.statements(db).await?;
    cluster.reset_statements(db).await?;
    Ok(json!({
        "cpu_us_per_run": {
            "guardians": per_run_us(after.guardians - before.guardians),
            "jobs": per_run_us(after.jobs - before.jobs),
            "postgres": per_run_us(after.postgres - before.postgres),
        },
        "statement_ms_per_run": round(statements.total().ms / runs, 3),
        "statements": statements.to_json(),
    }))
}

struct Drain {
    items_per_s: f64,
    plain_per_s: f64,
    items: Value,
    plain: Value,
}

async fn drain(cluster: &Cluster) -> Result<Drain> {
    let db = cluster.database().await?;
    let guardians = harness::fleet(
        &db,
        GUARDIANS,
        &format!("{PRODUCTION}capacity = {CAPACITY}\n"),
    )
    .await;
    let pids: Vec<i32> = guardians.iter().filter_map(Guardian::pid).collect();
    // The root writes [1, …, 10000] as its result.
    flow(
        &db,
        &format!(r#"seq -s, 1 {ITEMS} | sed 's/.*/[&]/' > "$SISY_RESULT""#),
    )
    .await?;
    cluster.reset_statements(&db).await?;
    let before = cpu(cluster, &pids);
    db.client
        .query_one("SELECT sisy.trigger('list')", &[])
        .await?;
    harness::wait_for(
        &db.client,
        "the fan-out to end",
        "SELECT coalesce(bool_and(state <> 'running'), false) FROM sisy.flow_runs",
        Duration::from_millis(100),
        Duration::from_secs(600),
    )
    .await?;
    let row = db
        .client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'),
                    extract(epoch FROM max(finished_at) - min(started_at))::float8
               FROM sisy.runs WHERE job_name = 'each'",
            &[],
        )
        .await?;
    let (done, span): (i64, f64) = (row.get(0), row.get(1));
    anyhow::ensure!(done == ITEMS, "{done} items succeeded");
    let items_per_s = ITEMS as f64 / span;
    let items = phase(cluster, &db, &pids, before, ITEMS as f64).await?;

    db.client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('t', 'true', 'allow')",
        )
        .await?;
    let before = cpu(cluster, &pids);
    db.client
        .execute(
            "INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline)
             SELECT j.id, j.name, j.pool, now() + i * interval '1 microsecond', 'manual',
                    now(), now() + interval '10 minutes'
               FROM sisy.jobs j, generate_series(1, $1::bigint) i WHERE j.name = 't'",
            &[&ITEMS],
        )
        .await?;
    harness::wait_for(
        &db.client,
        "the plain runs to end",
        "SELECT count(*) = 0 FROM sisy.runs WHERE job_name = 't' AND state IN ('pending', 'running')",
        Duration::from_millis(100),
        Duration::from_secs(600),
    )
    .await?;
    let span: f64 = db
        .client
        .query_one(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8
               FROM sisy.runs WHERE job_name = 't'",
            &[],
        )
        .await?
        .get(0);
    let plain = phase(cluster, &db, &pids, before, ITEMS as f64).await?;
    Ok(Drain {
        items_per_s,
        plain_per_s: ITEMS as f64 / span,
        items,
        plain,
    })
}

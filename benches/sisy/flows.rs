//! Scenario flows: how soon a flow member starts after its last upstream finished, and what
//! one decision costs the database as flows grow.
//!
//! Hand-off latency (`started_at` of a member − the greatest `finished_at` of its upstreams,
//! both from the database clock), 2 guardians of capacity 16, real runs of `true`:
//! - a chain of 200 jobs (199 hand-offs per flow run);
//! - a fan-in: a root, 1,000 upstreams, one join (one hand-off per flow run, repeated).
//!
//! Decision cost: the time of the statement that records one member's end and decides what
//! follows, driven by SQL without guardians, at small and large sizes: a member in a chain of
//! 10 and of 200, the last upstream of a fan-in of 10 and of 1,000 (the join has that many
//! edges), and a plain run's end as the baseline. The target is that it grows with the edges
//! of the decided member, not with the size of the flow.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use crate::harness::{self, Cluster, Db, PRODUCTION, distribution, progress, round, target};

const GUARDIANS: usize = 2;
const CAPACITY: usize = 16;
const CHAIN: usize = 200;
const FAN_IN: usize = 1000;
const FAN_IN_REPEATS: usize = 5;

pub async fn run(cluster: &Cluster) -> Result<Value> {
    progress("flows: chain of 200 with guardians");
    let chain = handoffs_chain(cluster).await?;
    progress("flows: fan-in of 1,000 with guardians");
    let fan_in = handoffs_fan_in(cluster).await?;
    progress("flows: the database time of one decision");
    let decision = decision_cost(cluster).await?;
    let p99 = |v: &Value| v["p99_ms"].as_f64().unwrap_or(f64::MAX);
    Ok(json!({
        "guardians": GUARDIANS,
        "capacity_per_guardian": CAPACITY,
        "chain_200_handoff": chain,
        "chain_200_target": target(p99(&chain), 50.0, true, "p99 at most 50 ms"),
        "fan_in_1000_handoff": fan_in,
        "fan_in_1000_target": target(p99(&fan_in), 50.0, true, "p99 at most 50 ms"),
        "decision_ms": decision,
    }))
}

/// Creates jobs named by `names` (command `true`) and the edges `(job, upstream)`.
async fn graph(db: &Db, names: &[String], edges: &[(String, String)]) -> Result<()> {
    db.client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap) SELECT n, 'true', 'allow' FROM unnest($1::text[]) n",
            &[&names],
        )
        .await?;
    let (jobs, ups): (Vec<String>, Vec<String>) = edges.iter().cloned().unzip();
    db.client
        .execute(
            "INSERT INTO sisy.dependencies (job, upstream) SELECT * FROM unnest($1::text[], $2::text[])",
            &[&jobs, &ups],
        )
        .await?;
    Ok(())
}

fn chain_graph(prefix: &str, n: usize) -> (Vec<String>, Vec<(String, String)>) {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let edges = (1..n)
        .map(|i| (names[i].clone(), names[i - 1].clone()))
        .collect();
    (names, edges)
}

fn fan_in_graph(prefix: &str, n: usize) -> (Vec<String>, Vec<(String, String)>) {
    let root = format!("{prefix}root");
    let join = format!("{prefix}join");
    let ups: Vec<String> = (0..n).map(|i| format!("{prefix}u{i}")).collect();
    let mut edges: Vec<(String, String)> = ups.iter().map(|u| (u.clone(), root.clone())).collect();
    edges.extend(ups.iter().map(|u| (join.clone(), u.clone())));
    let mut names = ups;
    names.push(root);
    names.push(join);
    (names, edges)
}

/// Triggers `root` and waits until its flow run ended; returns the flow run id.
async fn run_flow(db: &Db, root: &str, timeout: Duration) -> Result<i64> {
    let run: i64 = db
        .client
        .query_one("SELECT sisy.trigger($1)", &[&root])
        .await?
        .get(0);
    let flow: i64 = db
        .client
        .query_one("SELECT flow_run_id FROM sisy.runs WHERE id = $1", &[&run])
        .await?
        .get(0);
    harness::wait_for(
        &db.client,
        "the flow run to end",
        &format!("SELECT state <> 'running' FROM sisy.flow_runs WHERE id = {flow}"),
        Duration::from_millis(50),
        timeout,
    )
    .await?;
    let state: String = db
        .client
        .query_one("SELECT state FROM sisy.flow_runs WHERE id = $1", &[&flow])
        .await?
        .get(0);
    anyhow::ensure!(state == "succeeded", "flow run {flow} ended {state}");
    Ok(flow)
}

/// Each member's start after its last upstream's end, in ms, for one flow run.
async fn handoffs(db: &Db, flow: i64) -> Result<Vec<f64>> {
    let rows = db
        .client
        .query(
            "SELECT extract(epoch FROM r.started_at - max(u.finished_at))::float8 * 1000
               FROM sisy.runs r
               JOIN sisy.flow_run_edges e ON e.flow_run_id = r.flow_run_id AND e.job = r.job_name
               JOIN sisy.runs u ON u.flow_run_id = r.flow_run_id AND u.job_name = e.upstream
              WHERE r.flow_run_id = $1
              GROUP BY r.id, r.started_at",
            &[&flow],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, f64>(0)).collect())
}

async fn handoffs_chain(cluster: &Cluster) -> Result<Value> {
    let db = cluster.database().await?;
    let _guardians = harness::fleet(
        &db,
        GUARDIANS,
        &format!("{PRODUCTION}capacity = {CAPACITY}\n"),
    )
    .await;
    let (names, edges) = chain_graph("c", CHAIN);
    graph(&db, &names, &edges).await?;
    let flow = run_flow(&db, "c0", Duration::from_secs(300)).await?;
    Ok(distribution(handoffs(&db, flow).await?))
}

async fn handoffs_fan_in(cluster: &Cluster) -> Result<Value> {
    let db = cluster.database().await?;
    let _guardians = harness::fleet(
        &db,
        GUARDIANS,
        &format!("{PRODUCTION}capacity = {CAPACITY}\n"),
    )
    .await;
    let (names, edges) = fan_in_graph("f", FAN_IN);
    graph(&db, &names, &edges).await?;
    let mut joins = Vec::new();
    for _ in 0..FAN_IN_REPEATS {
        let flow = run_flow(&db, "froot", Duration::from_secs(300)).await?;
        let row = db
            .client
            .query_one(
                "SELECT extract(epoch FROM j.started_at - (SELECT max(finished_at) FROM sisy.runs u
                          WHERE u.flow_run_id = j.flow_run_id AND u.job_name LIKE 'fu%'))::float8 * 1000
                   FROM sisy.runs j WHERE j.flow_run_id = $1 AND j.job_name = 'fjoin'",
                &[&flow],
            )
            .await?;
        joins.push(row.get::<_, f64>(0));
    }
    Ok(distribution(joins))
}

/// The client-side time of `UPDATE … SET state = 'succeeded'` on run `id` (already running).
async fn finish(db: &Db, id: i64) -> Result<f64> {
    let began = Instant::now();
    db.client
        .execute(
            "UPDATE sisy.runs SET state = 'succeeded', finished_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(began.elapsed().as_secs_f64() * 1000.0)
}

/// The pending runs of a flow run, marked running as a guardian's claim would.
async fn claim_all(db: &Db, flow: i64) -> Result<Vec<(i64, String)>> {
    let rows = db
        .client
        .query(
            "UPDATE sisy.runs SET state = 'running', host = 'bench', claimed_at = now(), started_at = now()
              WHERE flow_run_id = $1 AND state = 'pending' RETURNING id, job_name",
            &[&flow],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn open(db: &Db, root: &str) -> Result<i64> {
    let run: i64 = db
        .client
        .query_one("SELECT sisy.trigger($1)", &[&root])
        .await?
        .get(0);
    Ok(db
        .client
        .query_one("SELECT flow_run_id FROM sisy.runs WHERE id = $1", &[&run])
        .await?
        .get(0))
}

/// Median time of a member's end in a chain of `n` (each end decides the next member).
async fn chain_decision(db: &Db, n: usize) -> Result<f64> {
    let prefix = format!("k{n}_");
    let (names, edges) = chain_graph(&prefix, n);
    graph(db, &names, &edges).await?;
    let flow = open(db, &names[0]).await?;
    let mut times = Vec::new();
    loop {
        let claimed = claim_all(db, flow).await?;
        if claimed.is_empty() {
            break;
        }
        for (id, _) in claimed {
            times.push(finish(db, id).await?);
        }
    }
    anyhow::ensure!(times.len() == n, "chain of {n}: {} ends", times.len());
    Ok(median(times))
}

/// The end of the last upstream of a fan-in of `n` (it decides the join, which has n edges),
/// and the median end of the others (each finds the join not ready yet).
async fn fan_in_decision(db: &Db, n: usize) -> Result<(f64, f64)> {
    let prefix = format!("g{n}_");
    let (names, edges) = fan_in_graph(&prefix, n);
    graph(db, &names, &edges).await?;
    let root = format!("{prefix}root");
    let flow = open(db, &root).await?;
    let claimed = claim_all(db, flow).await?;
    finish(db, claimed[0].0).await?;
    let ups = claimed_all_but_last(claim_all(db, flow).await?);
    let mut others = Vec::new();
    for (id, _) in &ups.0 {
        others.push(finish(db, *id).await?);
    }
    let last = finish(db, ups.1.0).await?;
    Ok((last, median(others)))
}

fn claimed_all_but_last(mut v: Vec<(i64, String)>) -> (Vec<(i64, String)>, (i64, String)) {
    let last = v.pop().expect("a fan-in has upstreams");
    (v, last)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    round(v[v.len() / 2], 2)
}

async fn decision_cost(cluster: &Cluster) -> Result<Value> {
    let db = cluster.database().await?;
    // Baseline: a plain run's end, no flow.
    db.client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('plain', 'true', 'allow')",
        )
        .await?;
    let mut plain = Vec::new();
    for _ in 0..200 {
        let id: i64 = db
            .client
            .query_one("SELECT sisy.trigger('plain')", &[])
            .await?
            .get(0);
        db.client
            .execute(
                "UPDATE sisy.runs SET state = 'running', host = 'bench' WHERE id = $1",
                &[&id],
            )
            .await?;
        plain.push(finish(&db, id).await?);
    }
    let chain_10 = chain_decision(&db, 10).await?;
    let chain_200 = chain_decision(&db, CHAIN).await?;
    let (fan_10_last, fan_10_other) = fan_in_decision(&db, 10).await?;
    let (fan_1000_last, fan_1000_other) = fan_in_decision(&db, FAN_IN).await?;
    Ok(json!({
        "plain_run_end": median(plain),
        "chain_10_member_end": chain_10,
        "chain_200_member_end": chain_200,
        "fan_in_10_last_upstream_end": round(fan_10_last, 2),
        "fan_in_10_other_upstream_end": fan_10_other,
        "fan_in_1000_last_upstream_end": round(fan_1000_last, 2),
        "fan_in_1000_other_upstream_end": fan_1000_other,
        "chain_target": target(chain_200 / chain_10.max(0.01), 1.5, true,
            "a chain member's decision costs the same in a chain of 200 as of 10 (ratio at most 1.5)"),
        "note": "client-side statement times on loopback, ms; the last upstream of a fan-in decides a join with that many edges",
    }))
}

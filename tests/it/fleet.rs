//! A heartbeat's cost follows its own host, not the fleet; other hosts' runs are rescued by
//! the one guardian that holds the `rescue` lease, and rescue goes on when that guardian
//! dies or the lease row is damaged.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::util::{Guardian, fleet, migrated_db, wait_for, wait_until};

const LONG: Duration = Duration::from_secs(60);
/// The test guardians' heartbeat_interval and lease (util.rs).
const INTERVAL: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(3);

/// `n` hosts with live leases and 4 running runs each (of 50 jobs), after a history of
/// 20,000 finished runs whatever `n` (so that only the fleet differs, not the table's size),
/// and 3 hosts dead for an hour without runs (what housekeeping has not pruned yet); a job
/// capped at 2 with 2 running runs and one pending run held back; as statistics know them.
async fn populate(client: &Client, n: usize) {
    client
        .batch_execute(&format!(
            "INSERT INTO sisy.jobs (name, command) SELECT 'job' || i, 'true' FROM generate_series(1, 50) i;
             INSERT INTO sisy.jobs (name, command, max_concurrency) VALUES ('capped', 'true', 2);
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline,
                                    state, host, claimed_at, started_at, heartbeat_at)
             SELECT id, name, 'default', now() - make_interval(secs => k), 'manual', now(),
                    now() + interval '1 hour', CASE WHEN k <= 2 THEN 'running' ELSE 'pending' END,
                    CASE WHEN k <= 2 THEN 'h2' END, now(), now(), now()
               FROM sisy.jobs, generate_series(1, 3) k WHERE name = 'capped';
             INSERT INTO sisy.hosts (name, lease_until, started_at)
             SELECT 'h' || i, now() + interval '1 hour', '2026-01-01' FROM generate_series(1, {n}) i;
             INSERT INTO sisy.hosts (name, lease_until) SELECT 'gone' || i, now() - interval '1 hour'
               FROM generate_series(1, 3) i;
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline,
                                    state, host, claimed_at, started_at, heartbeat_at, finished_at)
             SELECT (SELECT id FROM sisy.jobs WHERE name = 'job' || k % 50 + 1),
                    'old-' || k, 'default', now() - make_interval(secs => k), 'manual',
                    now(), now() + interval '1 hour', 'succeeded', 'h' || k % {n} + 1,
                    now(), now(), now(), now()
               FROM generate_series(1, 20000) k;
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline,
                                    state, host, claimed_at, started_at, heartbeat_at)
             SELECT (SELECT id FROM sisy.jobs WHERE name = 'job' || (i * 4 + k) % 50 + 1),
                    'h' || i || '-' || k, 'default', now() - make_interval(secs => k), 'manual',
                    now(), now() + interval '1 hour', 'running', 'h' || i, now(), now(), now()
               FROM generate_series(1, {n}) i, generate_series(1, 4) k;"
        ))
        .await
        .unwrap();
    client.batch_execute("VACUUM ANALYZE").await.unwrap();
}

/// One heartbeat of host h1 (as the holder of the rescue lease, or not): the shared buffers
/// it touches and its execution time in ms, the least of five beats (each rolled back), by
/// `EXPLAIN (ANALYZE, BUFFERS)` of the guardian's own prepared statement.
async fn beat_cost(client: &Client, rescuer: bool) -> (i64, f64) {
    let lease = 1.0;
    // The statement judges others only when the database has been up for a lease.
    wait_until(
        client,
        "the server to be up for a lease",
        LONG,
        || "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8".into(),
        |up: f64| up > lease + 0.5,
    )
    .await;
    let ids: Vec<i64> = client
        .query(
            "SELECT id FROM sisy.runs WHERE host = 'h1' AND state = 'running' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 4);
    let ids = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    client
        .batch_execute(&format!(
            "DEALLOCATE ALL;
             DO $$ BEGIN
                 -- (sisy.leases is missing before migration 0013: figures of the old schema)
                 IF to_regclass('sisy.leases') IS NOT NULL THEN
                     DELETE FROM sisy.leases;
                     INSERT INTO sisy.leases VALUES ('rescue', '{}', now() + interval '1 hour');
                 END IF;
             END $$;
             PREPARE beat (text, float8, int, bigint[], int[], text[], boolean, timestamptz, boolean) AS {}",
            if rescuer { "h1" } else { "h2" },
            sisyphus::db::q::HEARTBEAT
        ))
        .await
        .unwrap();
    cost(
        client,
        &format!(
            "EXECUTE beat('h1', {lease}, 4, '{{{ids}}}', '{{1,2,3,4}}', '{{default}}', true, \
             '2026-01-01', true)"
        ),
    )
    .await
}

/// The shared buffers `execute` touches and its execution time in ms, the least of five runs
/// (each rolled back), by `EXPLAIN (ANALYZE, BUFFERS)`.
async fn cost(client: &Client, execute: &str) -> (i64, f64) {
    let mut best = (i64::MAX, f64::MAX);
    for _ in 0..5 {
        client.batch_execute("BEGIN").await.unwrap();
        let row = client
            .query_one(
                &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {execute}"),
                &[],
            )
            .await
            .unwrap();
        client.batch_execute("ROLLBACK").await.unwrap();
        let plan: serde_json::Value = row.get(0);
        let top = &plan[0]["Plan"];
        let buffers = top["Shared Hit Blocks"].as_i64().unwrap()
            + top["Shared Read Blocks"].as_i64().unwrap();
        let ms = plan[0]["Execution Time"].as_f64().unwrap();
        best = (best.0.min(buffers), best.1.min(ms));
    }
    best
}

/// One tick and one claim (of 4 runs) of host h1, as its dispatcher and claimer send them:
/// nothing to claim but a run of a job at its cap.
async fn pass_cost(client: &Client) -> ((i64, f64), (i64, f64)) {
    client
        .batch_execute(&format!(
            "PREPARE tick (text[], text, text[]) AS {};
             PREPARE claim (text, text[], bigint) AS {};",
            sisyphus::db::q::RUNS_TICK,
            sisyphus::db::q::RUNS_CLAIM
        ))
        .await
        .unwrap();
    (
        cost(client, "EXECUTE tick('{default}', 'h1', '{}')").await,
        cost(client, "EXECUTE claim('h1', '{default}', 4)").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_tick_and_claim_cost_the_same_with_ten_hosts_or_a_thousand() {
    let mut figures = Vec::new();
    let mut last = None;
    for n in [10, 100, 1000] {
        let (db, client) = migrated_db().await;
        populate(&client, n).await;
        let member = beat_cost(&client, false).await;
        let rescuer = beat_cost(&client, true).await;
        let (tick, claim) = pass_cost(&client).await;
        println!(
            "among {n:>4} hosts (4 running runs each), one host's heartbeat: \
             {:>3} buffers {:.3} ms; as the rescue lease holder {:>3} buffers {:.3} ms; \
             tick {:>3} buffers {:.3} ms; claim {:>3} buffers {:.3} ms",
            member.0, member.1, rescuer.0, rescuer.1, tick.0, tick.1, claim.0, claim.1
        );
        figures.push((n, member, rescuer, tick, claim));
        last = Some((db, client));
    }
    let last = last.unwrap();
    let (_, small_member, _, small_tick, small_claim) = figures[0];
    let (_, big_member, big_rescuer, big_tick, big_claim) = figures[2];
    for (what, small, big) in [
        ("tick", small_tick, big_tick),
        ("claim", small_claim, big_claim),
    ] {
        assert!(
            big.0 as f64 <= 1.5 * small.0 as f64,
            "a {what} among 1,000 hosts touches {} buffers, among 10 hosts {}: its work grows \
             with the fleet",
            big.0,
            small.0
        );
    }
    assert!(
        big_member.0 as f64 <= 1.5 * small_member.0 as f64,
        "a heartbeat among 1,000 hosts touches {} buffers, among 10 hosts {}: its work grows \
         with the fleet",
        big_member.0,
        small_member.0
    );
    // The rescuer reads the hosts (one row each) to find the dead ones, and the running runs
    // of those only: not the 4,000 running runs of the live hosts (over 100 pages). It also
    // renews its lease row, which the member only probes (a few buffers of the margin).
    let (_big_db, big_client) = &last;
    let host_pages: i64 = big_client
        .query_one(
            "SELECT pg_relation_size('sisy.hosts') / current_setting('block_size')::int",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        big_rescuer.0 <= big_member.0 + host_pages + 20,
        "the rescuer's heartbeat among 1,000 hosts touches {} buffers, a member's {}, the \
         hosts table has {host_pages} pages: the rescuer reads more than the hosts",
        big_rescuer.0,
        big_member.0
    );
}

/// The rescue lease as it is now: (holder, until in the future).
async fn rescue_lease(client: &Client) -> (Option<String>, bool) {
    let row = client
        .query_opt(
            "SELECT holder, coalesce(until > now(), false) FROM sisy.leases WHERE name = 'rescue'",
            &[],
        )
        .await
        .unwrap();
    row.map(|r| (r.get(0), r.get(1))).unwrap_or((None, false))
}

/// Waits until some guardian of `names` holds the rescue lease; its name.
async fn wait_holder(client: &Client, names: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let (Some(holder), true) = rescue_lease(client).await
            && names.contains(&holder.as_str())
        {
            return holder;
        }
        assert!(
            Instant::now() < deadline,
            "no guardian of {names:?} took the rescue lease: {:?}",
            rescue_lease(client).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A host `name` whose lease ends `secs` from now (negative: already ended) with one running
/// run; the run's id and the host's lease end.
async fn dying_host(
    client: &Client,
    name: &str,
    secs: f64,
) -> (i64, chrono::DateTime<chrono::Utc>) {
    let row = client
        .query_one(
            "WITH h AS (
                INSERT INTO sisy.hosts (name, lease_until) VALUES ($1, now() + make_interval(secs => $2))
                RETURNING name, lease_until
             )
             INSERT INTO sisy.runs (job_name, pool, scheduled_for, reason, due_at, deadline, state,
                                    host, claimed_at, started_at, heartbeat_at)
             SELECT 'on-' || name, 'default', now(), 'manual', now(), now() + interval '1 hour',
                    'running', name, now(), now(), now() FROM h
             RETURNING id, (SELECT lease_until FROM h)",
            &[&name, &secs],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Waits until run `id` is lost; its error and when it was declared lost.
async fn wait_lost(client: &Client, id: i64) -> (String, chrono::DateTime<chrono::Utc>) {
    wait_until(
        client,
        "the dead host's run to be declared lost",
        LONG,
        || format!("SELECT state FROM sisy.runs WHERE id = {id}"),
        |state: String| state == "lost",
    )
    .await;
    let row = client
        .query_one(
            "SELECT error, finished_at FROM sisy.runs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_rescues_and_another_takes_over_when_it_dies() {
    let (db, client) = migrated_db().await;
    let mut guardians = fleet(&db, &client, 2, "").await;
    let holder = wait_holder(&client, &["g1", "g2"], LONG).await;
    let (run, dead_at) = dying_host(&client, "dead1", 1.0).await;
    let (error, lost_at) = wait_lost(&client, run).await;
    assert!(
        error.ends_with(&format!("declared lost by {holder}")),
        "declared lost by another guardian than the lease holder {holder}: {error}"
    );
    // Within a heartbeat interval of the dead lease (and a second of scheduling slack).
    let late = (lost_at - dead_at).to_std().unwrap_or_default();
    assert!(
        late <= INTERVAL + Duration::from_secs(1),
        "declared lost {late:?} after the dead host's lease passed"
    );
    let (other, index) = if holder == "g1" { ("g2", 1) } else { ("g1", 0) };
    // The holder logs what its beat did once the beat has returned (after the commit).
    let rescuer = &guardians[1 - index];
    wait_for("the lease holder to log the rescue", LONG, || {
        rescuer.log().contains("runs of dead hosts declared lost")
    })
    .await;
    assert!(
        !guardians[index]
            .log()
            .contains("runs of dead hosts declared lost"),
        "only the lease holder {holder} declares runs lost:\n{}",
        guardians[index].log()
    );

    // The holder dies: its lease passes with its host's, and the other takes it over.
    let killed = Instant::now();
    guardians[if index == 1 { 0 } else { 1 }].kill();
    let taker = wait_holder(&client, &[other], LEASE + INTERVAL * 3).await;
    assert_eq!(taker, other);
    assert!(
        killed.elapsed() <= LEASE + INTERVAL * 3,
        "{other} took the rescue lease {:?} after its holder died",
        killed.elapsed()
    );
    let (run, dead_at) = dying_host(&client, "dead2", 1.0).await;
    let (error, lost_at) = wait_lost(&client, run).await;
    assert!(
        error.ends_with(&format!("declared lost by {other}")),
        "{error}"
    );
    let late = (lost_at - dead_at).to_std().unwrap_or_default();
    assert!(
        late <= INTERVAL + Duration::from_secs(1),
        "declared lost {late:?} after the dead host's lease passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rescue_lease_row_does_not_stop_rescue() {
    let (db, client) = migrated_db().await;
    // A host that died long ago, named as holder below.
    client
        .batch_execute(
            "INSERT INTO sisy.hosts (name, lease_until) VALUES ('old', now() - interval '1 day')",
        )
        .await
        .unwrap();
    let _g = Guardian::start(&db, "g1", "");
    wait_holder(&client, &["g1"], LONG).await;
    let bad = [
        "NULL, NULL",
        "'ghost', 'infinity'",
        "'old', now() + interval '100 years'",
        "'g1', NULL",
        "'', '-infinity'",
    ];
    for (i, row) in bad.iter().enumerate() {
        client
            .batch_execute(&format!(
                "DELETE FROM sisy.leases; INSERT INTO sisy.leases VALUES ('rescue', {row})"
            ))
            .await
            .unwrap();
        let (run, _) = dying_host(&client, &format!("dead{i}"), -1.0).await;
        let (error, _) = wait_lost(&client, run).await;
        assert!(
            error.ends_with("declared lost by g1"),
            "with the lease row ({row}): {error}"
        );
        assert_eq!(
            rescue_lease(&client).await,
            (Some("g1".to_string()), true),
            "with the lease row ({row})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_of_a_host_row_deleted_by_hand_are_lost() {
    let (_db, client) = migrated_db().await;
    let (run, _) = dying_host(&client, "gone", 3600.0).await;
    client
        .batch_execute("DELETE FROM sisy.hosts WHERE name = 'gone'")
        .await
        .unwrap();
    let (error, _) = wait_lost(&client, run).await;
    assert!(error.contains("host row of gone was deleted"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescuer_that_stops_cleanly_hands_over_at_the_next_beat() {
    let (db, client) = migrated_db().await;
    let mut guardians = fleet(&db, &client, 2, "").await;
    let holder = wait_holder(&client, &["g1", "g2"], LONG).await;
    let (index, other) = if holder == "g1" { (0, "g2") } else { (1, "g1") };
    assert_eq!(guardians[index].stop(), Some(0));
    let stopped = Instant::now();
    // Released, not left to pass a lease later: the other's next beat takes it.
    wait_holder(&client, &[other], LEASE).await;
    assert!(
        stopped.elapsed() <= INTERVAL + Duration::from_secs(1),
        "{other} took the rescue lease {:?} after its holder stopped",
        stopped.elapsed()
    );
}

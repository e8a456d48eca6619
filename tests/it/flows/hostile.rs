//! Careless and hostile uses of flows, decided by the database with run states driven by
//! SQL: a member renamed while its flow run runs, conditions that cannot be evaluated or are
//! not predicates, results that are arrays or strings, `sisy.retry` of a member's run, a
//! chain of 200 members, housekeeping during a flow run, the graph edited mid-run.

use std::time::{Duration, Instant};

use super::{drive, exec, flow_state, member, message, open, refused, runs_of};
use crate::util::{backend_cpu, migrated_db};

/// A member renamed while its flow run runs: the flow run still reaches it, finishes it
/// and ends (it goes by the snapshot's name), and the next flow run uses the new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_member_while_its_flow_run_runs_does_not_hang_it() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true'), ('c', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b');",
    )
    .await;
    let fr = open(&client, "a").await;
    exec(&client, "UPDATE sisy.jobs SET name = 'b2' WHERE name = 'b'").await;
    drive(&client, fr, "a", "succeeded", None).await;
    assert_eq!(
        member(&client, fr, "b").await.0,
        "pending",
        "b is reached by its snapshot name"
    );
    drive(&client, fr, "b", "succeeded", None).await;
    drive(&client, fr, "c", "succeeded", None).await;
    assert_eq!(flow_state(&client, fr).await, "succeeded");
    let fr2 = open(&client, "a").await;
    drive(&client, fr2, "a", "succeeded", None).await;
    assert_eq!(member(&client, fr2, "b2").await.0, "pending");
}

/// A condition naming a jsonpath variable (`$x`) cannot be evaluated: it is refused when
/// the edge is written, and one already there (written before this check, or by a role that
/// bypasses it) never makes the upstream's finishing write fail: the edge counts as skipped,
/// with the reason in the member's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_that_cannot_be_evaluated_never_fails_the_upstream_s_finish() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true');",
    )
    .await;
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies VALUES ('b', 'a', '$x > 0')",
    )
    .await;
    assert!(
        e.contains("condition") && e.contains("variable \"x\""),
        "{e}"
    );
    exec(
        &client,
        "INSERT INTO sisy.dependencies VALUES ('b', 'a', NULL)",
    )
    .await;
    let e = refused(
        &client,
        "UPDATE sisy.dependencies SET condition = '$x > 0' WHERE job = 'b'",
    )
    .await;
    assert!(e.contains("condition"), "{e}");
    // One that got in anyway (triggers off, as a restore does).
    exec(
        &client,
        "ALTER TABLE sisy.dependencies DISABLE TRIGGER USER;
         UPDATE sisy.dependencies SET condition = '$x > 0' WHERE job = 'b';
         ALTER TABLE sisy.dependencies ENABLE TRIGGER USER;",
    )
    .await;
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", Some("{\"rows\": 3}")).await;
    let (state, error) = member(&client, fr, "b").await;
    assert_eq!(state, "skipped", "{error}");
    assert!(
        error.contains("condition") && error.contains("variable \"x\""),
        "{error}"
    );
    assert_eq!(flow_state(&client, fr).await, "succeeded");
}

/// Conditions over results of every shape: a path that is not a predicate, a result that is
/// an array, a string, a number, JSON null, a timestamp compared without a zone. No error,
/// ever; the edge counts as skipped unless the predicate is true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_over_results_of_every_shape_never_fail_and_skip_unless_true() {
    let (_db, client) = migrated_db().await;
    let cases = [
        ("$.rows", "{\"rows\": 3}", "skipped"),
        ("$.ok", "{\"ok\": true}", "pending"),
        ("$.rows > 0", "[1, 2, 3]", "skipped"),
        ("$[*] > 2", "[1, 2, 3]", "pending"),
        ("$.rows > 0", "\"just text\"", "skipped"),
        ("$ == \"just text\"", "\"just text\"", "pending"),
        ("$ > 2", "7", "pending"),
        ("$.rows > 0", "null", "skipped"),
        ("$.rows / 0 > 1", "{\"rows\": 3}", "skipped"),
        (
            "$.at.datetime() < \"2030-01-01\".datetime()",
            "{\"at\": \"2026-01-01T00:00:00+01:00\"}",
            "skipped",
        ),
        (
            "$.rows like_regex \"^[0-9]+$\"",
            "{\"rows\": \"12\"}",
            "pending",
        ),
    ];
    for (i, (condition, _, _)) in cases.iter().enumerate() {
        client
            .batch_execute(&format!(
                "INSERT INTO sisy.jobs (name, command) VALUES ('r{i}', 'true'), ('m{i}', 'true');"
            ))
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO sisy.dependencies VALUES ($1, $2, $3::text::jsonpath)",
                &[&format!("m{i}"), &format!("r{i}"), condition],
            )
            .await
            .unwrap_or_else(|e| panic!("{condition}: {}", message(&e)));
    }
    for (i, (condition, result, want)) in cases.iter().enumerate() {
        let fr = open(&client, &format!("r{i}")).await;
        drive(&client, fr, &format!("r{i}"), "succeeded", Some(result)).await;
        let (state, error) = member(&client, fr, &format!("m{i}")).await;
        assert_eq!(&state, want, "{condition} over {result}: {error}");
    }
}

/// `sisy.retry` of a member's run is refused with the way to run it again in its flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sisy_retry_of_a_member_s_run_points_to_rerun_flow() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a');",
    )
    .await;
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", None).await;
    drive(&client, fr, "b", "failed", None).await;
    let id: i64 = client
        .query_one("SELECT id FROM sisy.runs WHERE job_name = 'b'", &[])
        .await
        .unwrap()
        .get(0);
    let e = refused(&client, &format!("SELECT sisy.retry({id})")).await;
    assert!(
        e.contains(&format!("sisy.rerun_flow({fr}, 'b')")) && e.contains("sisy.trigger('b')"),
        "{e}"
    );
    assert_eq!(runs_of(&client, fr, "b").await, 1);
    // Outside the flow, the job still runs alone.
    let alone = crate::util::trigger(&client, "b").await;
    let flow: Option<i64> = client
        .query_one("SELECT flow_run_id FROM sisy.runs WHERE id = $1", &[&alone])
        .await
        .unwrap()
        .get(0);
    assert_eq!(flow, None);
}

/// A chain of 200 members: each decision is quick (it follows the edges of the member
/// decided; judged by the server process's CPU time, which a loaded machine hardly changes), and a failure at the top records upstream_failed all the way down in one
/// transaction, without recursion in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_200_members_decides_fast_and_cascades_upstream_failed_to_the_bottom() {
    let (_db, client) = migrated_db().await;
    let n = 200;
    let mut sql = "INSERT INTO sisy.jobs (name, command) SELECT 'c' || i, 'true' FROM generate_series(0, 199) i;".to_string();
    sql += "INSERT INTO sisy.dependencies (job, upstream) SELECT 'c' || i, 'c' || (i - 1) FROM generate_series(1, 199) i;";
    exec(&client, &sql).await;

    // All succeed: 200 decisions, the slowest measured.
    let fr = open(&client, "c0").await;
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let began = backend_cpu(&client).await;
        drive(&client, fr, &format!("c{i}"), "succeeded", None).await;
        slowest = slowest.max(backend_cpu(&client).await - began);
    }
    eprintln!("chain of {n}: slowest finish-and-decide {slowest:?} of CPU");
    assert_eq!(flow_state(&client, fr).await, "succeeded");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");

    // The top fails: 199 upstream_failed in the finishing transaction.
    let fr = open(&client, "c0").await;
    let began = Instant::now();
    drive(&client, fr, "c0", "failed", None).await;
    eprintln!(
        "cascade of {} upstream_failed: {:?}",
        n - 1,
        began.elapsed()
    );
    let cascaded: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE flow_run_id = $1 AND state = 'upstream_failed'",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cascaded, n - 1);
    let (_, error) = member(&client, fr, "c199").await;
    assert!(error.contains("'c198'"), "{error}");
    assert_eq!(flow_state(&client, fr).await, "failed");
}

/// Housekeeping never deletes runs of a flow run that still runs (its members' outcomes
/// and results are read from them), however old; once the flow run ended, they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_never_prunes_runs_of_a_running_flow_run() {
    let (db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true'), ('c', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b');",
    )
    .await;
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", Some("{\"rows\": 1}")).await;
    // Finished long ago, as far as the retention can tell.
    exec(
        &client,
        &format!("UPDATE sisy.runs SET finished_at = now() - interval '400 days' WHERE flow_run_id = {fr}"),
    )
    .await;
    let pool = sisyphus::db::pool(&db.url, 2).unwrap();
    let retention = Duration::from_secs(30 * 86_400);
    sisyphus::service::reaper::prune(&pool, retention)
        .await
        .unwrap();
    assert_eq!(
        runs_of(&client, fr, "a").await,
        1,
        "a run of a running flow run was pruned"
    );
    drive(&client, fr, "b", "succeeded", None).await;
    drive(&client, fr, "c", "succeeded", None).await;
    assert_eq!(flow_state(&client, fr).await, "succeeded");
    let inputs: serde_json::Value = client
        .query_one(
            &format!("SELECT inputs FROM sisy.runs WHERE flow_run_id = {fr} AND job_name = 'b'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(inputs, serde_json::json!({"a": {"rows": 1}}));
    // Ended: its old runs go like any.
    sisyphus::service::reaper::prune(&pool, retention)
        .await
        .unwrap();
    assert_eq!(runs_of(&client, fr, "a").await, 0);
}

/// Editing the graph while a flow run runs changes later flow runs only: the running one
/// follows the snapshot it opened with (members, edges, rules, conditions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_graph_mid_run_changes_later_flow_runs_only() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('a', 'true', 'allow');
         INSERT INTO sisy.jobs (name, command) VALUES ('b', 'true'), ('c', 'true'), ('d', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b');",
    )
    .await;
    let first = open(&client, "a").await;
    exec(
        &client,
        "DELETE FROM sisy.dependencies WHERE job = 'c';
         INSERT INTO sisy.dependencies (job, upstream, condition) VALUES ('c', 'a', '$.never == true'), ('d', 'b', NULL);
         UPDATE sisy.jobs SET trigger_rule = 'one_failed' WHERE name = 'b';",
    )
    .await;
    let second = open(&client, "a").await;
    // The first: a -> b -> c, b all_success, no d.
    drive(&client, first, "a", "succeeded", None).await;
    assert_eq!(member(&client, first, "b").await.0, "pending");
    assert_eq!(member(&client, first, "c").await.0, "none");
    drive(&client, first, "b", "succeeded", None).await;
    drive(&client, first, "c", "succeeded", None).await;
    assert_eq!(member(&client, first, "d").await.0, "none");
    assert_eq!(flow_state(&client, first).await, "succeeded");
    // The second: b is a fallback now (skipped), c's condition is false, d follows b.
    drive(&client, second, "a", "succeeded", None).await;
    assert_eq!(member(&client, second, "b").await.0, "skipped");
    assert_eq!(member(&client, second, "c").await.0, "skipped");
    assert_eq!(member(&client, second, "d").await.0, "skipped");
    assert_eq!(flow_state(&client, second).await, "succeeded");
}

/// A job moved from one flow to another whose flow run has the same logical time (two roots
/// scheduled at 03:00): its runs in both flow runs share the occurrence's attempt numbers.
/// A retry in the first must not collide with the second's run and be lost (the first flow
/// run then waited for a retry that did not exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_never_collides_with_the_same_job_s_run_in_another_flow_run() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('r1', 'true'), ('r2', 'true');
         INSERT INTO sisy.jobs (name, command, max_retries, retry_delay) VALUES ('x', 'true', 1, '0');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('x', 'r1');",
    )
    .await;
    let at = "'2026-11-22 03:00:00+00'";
    let root = |job: &str| {
        format!(
            "INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline)
             SELECT id, name, pool, {at}, 'schedule', now(), now() + interval '1 hour' FROM sisy.jobs WHERE name = '{job}'"
        )
    };
    exec(&client, &root("r1")).await;
    exec(
        &client,
        "DELETE FROM sisy.dependencies WHERE job = 'x';
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('x', 'r2');",
    )
    .await;
    exec(&client, &root("r2")).await;
    let ids: Vec<i64> = client
        .query("SELECT id FROM sisy.flow_runs ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (f1, f2) = (ids[0], ids[1]);
    drive(&client, f1, "r1", "succeeded", None).await;
    drive(&client, f2, "r2", "succeeded", None).await;
    drive(&client, f1, "x", "failed", None).await;
    assert_eq!(
        member(&client, f1, "x").await.0,
        "pending",
        "x's retry in the first flow run"
    );
    drive(&client, f1, "x", "succeeded", None).await;
    assert_eq!(flow_state(&client, f1).await, "succeeded");
    drive(&client, f2, "x", "failed", None).await;
    drive(&client, f2, "x", "failed", None).await;
    assert_eq!(
        runs_of(&client, f2, "x").await,
        2,
        "one retry, as max_retries says"
    );
    assert_eq!(flow_state(&client, f2).await, "failed");
}

/// A join after 1,000 upstreams, each with a 4 KiB result: building it is quick (each edge's
/// validation walks up once), one statement ending 999 of them is quick (each upstream's
/// readiness check follows the join's edges by key), and the join's decision (inputs frozen
/// from every upstream's result) takes well under a second. Each step is judged by the CPU
/// time of the server process that runs it, which a loaded machine hardly changes (wall
/// times ran over their bounds on a 2-core machine busy with compilers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_after_1000_upstreams_with_results_is_decided_quickly() {
    join_after_1000_upstreams(4096).await;
}

/// The same with 32 KiB results (32 MB of inputs): freezing the inputs copies them once, not
/// once per upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_after_1000_upstreams_with_large_results_is_decided_quickly() {
    join_after_1000_upstreams(32 * 1024).await;
}

async fn join_after_1000_upstreams(result_size: i32) {
    let (_db, client) = migrated_db().await;
    let began = backend_cpu(&client).await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('root', 'true'), ('join', 'true');
         INSERT INTO sisy.jobs (name, command) SELECT 'u' || i, 'true' FROM generate_series(0, 999) i;
         INSERT INTO sisy.dependencies (job, upstream) SELECT 'u' || i, 'root' FROM generate_series(0, 999) i;
         INSERT INTO sisy.dependencies (job, upstream) SELECT 'join', 'u' || i FROM generate_series(0, 999) i;",
    )
    .await;
    let built = backend_cpu(&client).await - began;
    eprintln!("a join of 1,000 upstreams built in {built:?} of CPU");
    assert!(built < Duration::from_secs(15), "{built:?}");
    let fr = open(&client, "root").await;
    drive(&client, fr, "root", "succeeded", None).await;
    let began = backend_cpu(&client).await;
    exec(
        &client,
        &format!(
            "UPDATE sisy.runs SET state = 'running', host = 'h' WHERE flow_run_id = {fr} AND state = 'pending';
             UPDATE sisy.runs SET state = 'succeeded', finished_at = now(),
                    result = jsonb_build_object('blob', repeat('x', {result_size}))
              WHERE flow_run_id = {fr} AND job_name <> 'u999';"
        ),
    )
    .await;
    let bulk = backend_cpu(&client).await - began;
    eprintln!("one statement ending 999 upstreams: {bulk:?} of CPU");
    assert!(bulk < Duration::from_secs(10), "{bulk:?}");
    assert_eq!(runs_of(&client, fr, "join").await, 0);
    let began = backend_cpu(&client).await;
    super::finish(&client, fr, "u999", "succeeded", Some("{\"last\": true}")).await;
    let took = backend_cpu(&client).await - began;
    eprintln!(
        "deciding a join after 1,000 upstreams with {result_size}-byte results: {took:?} of CPU"
    );
    assert_eq!(member(&client, fr, "join").await.0, "pending");
    let keys: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs r, jsonb_object_keys(r.inputs) WHERE flow_run_id = $1 AND job_name = 'join'",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 1000);
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// One statement ending thousands of members' runs (a tick expiring them, a heartbeat
/// declaring them lost) moves their flow run on in time linear in the runs: the statement
/// trigger's look at what changed joined its two transition tables in a nested loop
/// (quadratic: 10,000 runs took 23 s). Judged by a ratio of the server process's CPU time,
/// not by a time, so that a loaded machine does not decide (a ratio of wall times still
/// moved with the load between the two statements): ending 8,000 runs must cost less than
/// 10 times ending 2,000 (measured 3.9 to 6.2 times; quadratic: 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_ending_10000_members_runs_is_quick() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command, overlap)
         SELECT 'm' || i, 'true', 'allow' FROM generate_series(0, 10000) i;
         INSERT INTO sisy.dependencies (job, upstream)
         SELECT 'm' || i, 'm0' FROM generate_series(1, 10000) i;",
    )
    .await;
    let fr = open(&client, "m0").await;
    drive(&client, fr, "m0", "succeeded", None).await;
    exec(
        &client,
        &format!("UPDATE sisy.runs SET state = 'running', host = 'h' WHERE flow_run_id = {fr} AND state = 'pending'"),
    )
    .await;
    let end = |filter: &'static str| {
        let client = &client;
        async move {
            let began = backend_cpu(client).await;
            exec(
                client,
                &format!(
                    "UPDATE sisy.runs SET state = 'succeeded', finished_at = now()
                      WHERE flow_run_id = {fr} AND state = 'running' {filter}"
                ),
            )
            .await;
            backend_cpu(client).await - began
        }
    };
    let few = end("AND substr(job_name, 2)::int <= 2000").await;
    let many = end("").await;
    eprintln!("ending 2,000 members' runs: {few:?} of CPU; 8,000: {many:?}");
    assert_eq!(flow_state(&client, fr).await, "succeeded");
    assert!(
        many < few * 10,
        "ending 8,000 members cost {many:?} of CPU, 2,000 cost {few:?}: not linear"
    );
}

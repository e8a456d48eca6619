//! Control of flow runs, decided by the database with run states driven by SQL:
//! `sisy.cancel_flow`, `sisy.rerun_flow` with and without `from_job`, `overlap = 'forbid'` on
//! a root, nothing decided once a flow run ended (Airflow #43475), fallbacks that are not
//! silently skipped (Argo #16057), joins after conditional branches, no duplicate
//! successors (django-tasks-scheduler #418), and the views.

use super::{drive, exec, finish, flow_state, member, open, refused, runs_of};
use crate::util::migrated_db;

/// The runs of `job` in flow run `fr`: (attempt, state, reason), oldest first.
async fn attempts(
    client: &tokio_postgres::Client,
    fr: i64,
    job: &str,
) -> Vec<(i32, String, String)> {
    client
        .query(
            "SELECT attempt, state, reason FROM sisy.runs WHERE flow_run_id = $1 AND job_name = $2
              ORDER BY attempt, id",
            &[&fr, &job],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

const DIAMOND: &str = "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true'), ('c', 'true');
     INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('cleanup', 'true', 'all_done');
     INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'a'), ('cleanup', 'b'), ('cleanup', 'c');";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_flow_cancels_pending_kills_running_and_decides_nothing_afterwards() {
    let (_db, client) = migrated_db().await;
    exec(&client, DIAMOND).await;
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", None).await;
    exec(
        &client,
        &format!("UPDATE sisy.runs SET state = 'running', host = 'h' WHERE flow_run_id = {fr} AND job_name = 'b'"),
    )
    .await;
    exec(&client, &format!("SELECT sisy.cancel_flow({fr})")).await;
    assert_eq!(flow_state(&client, fr).await, "cancelled");
    let (state, error) = member(&client, fr, "c").await;
    assert_eq!(state, "cancelled");
    assert!(error.contains("cancel_flow"), "{error}");
    let asked: bool = client
        .query_one(
            "SELECT kill_requested_at IS NOT NULL FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'b'",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert!(asked, "the running member's kill was not requested");
    // Its guardian kills it; an all_done cleanup is not revived (Airflow #43475), no retry.
    exec(
        &client,
        "UPDATE sisy.jobs SET max_retries = 3 WHERE name = 'b'",
    )
    .await;
    finish(&client, fr, "b", "killed", None).await;
    assert_eq!(
        runs_of(&client, fr, "b").await,
        1,
        "a killed member was retried"
    );
    assert_eq!(runs_of(&client, fr, "cleanup").await, 0);
    exec(&client, "SELECT sisy.flows_tend(interval '0 s')").await;
    assert_eq!(runs_of(&client, fr, "cleanup").await, 0);
    assert_eq!(flow_state(&client, fr).await, "cancelled");
    // Never reached, and never will be: flow_members says so.
    let cleanup: String = client
        .query_one(
            "SELECT state FROM sisy.flow_members WHERE flow_run_id = $1 AND job = 'cleanup'",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cleanup, "not_reached");

    let e = refused(&client, &format!("SELECT sisy.cancel_flow({fr})")).await;
    assert!(
        e.contains("already ended") && e.contains("cancelled"),
        "{e}"
    );
    let e = refused(&client, "SELECT sisy.cancel_flow(987654)").await;
    assert_eq!(e, "no flow run with id 987654");
    for call in [
        "SELECT sisy.cancel_flow(NULL)",
        "SELECT sisy.rerun_flow(NULL)",
    ] {
        let e = refused(&client, call).await;
        assert!(
            e.contains("flow_run_id must not be NULL") && !e.contains("<NULL>"),
            "{e}"
        );
    }
}

/// A member that fails while running, then ran again by rerun_flow: new attempts of what
/// did not succeed, succeeded members kept (their results are the inputs again), the flow
/// run running again, the count returned; the member's own retries count from the rerun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_flow_runs_again_what_did_not_succeed_and_keeps_the_rest() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('c', 'true');
         INSERT INTO sisy.jobs (name, command, max_retries, retry_delay) VALUES ('b', 'true', 1, '0');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b');",
    )
    .await;
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", Some("{\"rows\": 5}")).await;
    drive(&client, fr, "b", "failed", None).await;
    drive(&client, fr, "b", "failed", None).await; // its one retry
    assert_eq!(member(&client, fr, "c").await.0, "upstream_failed");
    assert_eq!(flow_state(&client, fr).await, "failed");

    let e = refused(&client, "SELECT sisy.rerun_flow(987654)").await;
    assert_eq!(e, "no flow run with id 987654");
    let e = refused(&client, &format!("SELECT sisy.rerun_flow({fr}, 'nope')")).await;
    assert!(
        e.contains("'nope' is not a member") && e.contains("a, b, c"),
        "{e}"
    );

    let n: i32 = client
        .query_one(&format!("SELECT sisy.rerun_flow({fr})"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "b and c");
    assert_eq!(flow_state(&client, fr).await, "running");
    let e = refused(&client, &format!("SELECT sisy.rerun_flow({fr})")).await;
    assert!(e.contains("still running"), "{e}");
    assert_eq!(
        attempts(&client, fr, "a").await.len(),
        1,
        "a succeeded: kept"
    );
    let inputs: serde_json::Value = client
        .query_one(
            "SELECT inputs FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'b' AND attempt = 3",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(inputs, serde_json::json!({"a": {"rows": 5}}));
    // The rerun's attempt fails: its own retry is due (max_retries counts from the rerun).
    drive(&client, fr, "b", "failed", None).await;
    drive(&client, fr, "b", "succeeded", None).await;
    drive(&client, fr, "c", "succeeded", None).await;
    assert_eq!(flow_state(&client, fr).await, "succeeded");
    let b: Vec<i32> = attempts(&client, fr, "b")
        .await
        .iter()
        .map(|a| a.0)
        .collect();
    assert_eq!(b, [1, 2, 3, 4]);
    let c = attempts(&client, fr, "c").await;
    assert_eq!(c.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(c[0].1, "upstream_failed");

    // from_job: that job and everything downstream, even when it succeeded; the root again.
    let n: i32 = client
        .query_one(&format!("SELECT sisy.rerun_flow({fr}, 'a')"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let a = attempts(&client, fr, "a").await;
    assert_eq!(
        a.last().unwrap(),
        &(2, "pending".to_string(), "retry".to_string())
    );
    drive(&client, fr, "a", "succeeded", None).await;
    drive(&client, fr, "b", "succeeded", None).await;
    drive(&client, fr, "c", "succeeded", None).await;
    assert_eq!(flow_state(&client, fr).await, "succeeded");
    let n: i32 = client
        .query_one(&format!("SELECT sisy.rerun_flow({fr})"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing left to run again");
    assert_eq!(flow_state(&client, fr).await, "succeeded");
}

/// A rerun after a cancel whose running member still succeeded (its end came after the
/// cancel, so its outcome was never recorded): what follows it is decided at once, not left
/// to the safety net.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_after_a_cancel_moves_on_from_members_that_ended_after_it() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true'), ('c', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b');",
    )
    .await;
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", None).await;
    exec(
        &client,
        &format!("UPDATE sisy.runs SET state = 'running', host = 'h' WHERE flow_run_id = {fr} AND job_name = 'b'"),
    )
    .await;
    exec(&client, &format!("SELECT sisy.cancel_flow({fr})")).await;
    finish(&client, fr, "b", "succeeded", None).await;
    let n: i32 = client
        .query_one(&format!("SELECT sisy.rerun_flow({fr})"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "c only");
    assert_eq!(member(&client, fr, "c").await.0, "pending");
    drive(&client, fr, "c", "succeeded", None).await;
    assert_eq!(flow_state(&client, fr).await, "succeeded");
}

/// overlap = 'forbid' on the root: a flow run opened while an earlier one runs is skipped,
/// every run of its root with it (a `target = 'all'` root has one per host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_forbid_skips_a_new_flow_run_while_one_runs_on_every_host() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.hosts (name, lease_until) VALUES ('h1', now() + interval '1 hour'), ('h2', now() + interval '1 hour');
         INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true');
         INSERT INTO sisy.jobs (name, command, target) VALUES ('wide', 'true', 'all'), ('w2', 'true', 'any');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('w2', 'wide');",
    )
    .await;
    for root in ["a", "wide"] {
        let first = open(&client, root).await;
        drive(&client, first, root, "succeeded", None).await;
        let second = open(&client, root).await;
        assert_ne!(first, second);
        assert_eq!(flow_state(&client, second).await, "skipped", "{root}");
        let rows = client
            .query(
                "SELECT state, coalesce(error, '') FROM sisy.runs WHERE flow_run_id = $1",
                &[&second],
            )
            .await
            .unwrap();
        assert!(!rows.is_empty());
        for row in rows {
            let (state, error): (String, String) = (row.get(0), row.get(1));
            assert_eq!(state, "skipped", "{root}: {error}");
            assert!(
                error.contains(&format!("flow run {first}")) && error.contains("forbid"),
                "{error}"
            );
        }
        let error: String = client
            .query_one("SELECT error FROM sisy.flow_runs WHERE id = $1", &[&second])
            .await
            .unwrap()
            .get(0);
        assert!(error.contains(&format!("flow run {first}")), "{error}");
    }
}

/// Fallbacks are decided like anything else: a `one_failed` notifier below a chain whose top
/// failed runs (upstream_failed is a failure), and the flow run still fails (Argo #16057).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_below_an_upstream_failed_chain_runs_and_the_flow_still_fails() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true'), ('c', 'true');
         INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('notify', 'true', 'one_failed');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b'), ('notify', 'c');",
    )
    .await;
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "failed", None).await;
    assert_eq!(member(&client, fr, "c").await.0, "upstream_failed");
    assert_eq!(member(&client, fr, "notify").await.0, "pending");
    assert_eq!(flow_state(&client, fr).await, "running");
    drive(&client, fr, "notify", "succeeded", None).await;
    assert_eq!(flow_state(&client, fr).await, "failed");
}

/// Two conditional branches and a `none_failed` join: the branch not taken is skipped, the
/// join runs after the one taken; if the taken one fails, the join is upstream_failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_none_failed_join_after_two_conditional_branches() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('check', 'true', 'allow');
         INSERT INTO sisy.jobs (name, command) VALUES ('full', 'true'), ('delta', 'true');
         INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('join', 'true', 'none_failed');
         INSERT INTO sisy.dependencies VALUES ('full', 'check', '$.changed > 100'),
                                              ('delta', 'check', '$.changed <= 100'),
                                              ('join', 'full', NULL), ('join', 'delta', NULL);",
    )
    .await;
    for (changed, taken, other, ends, join) in [
        (500, "full", "delta", "succeeded", "succeeded"),
        (7, "delta", "full", "succeeded", "succeeded"),
        (7, "delta", "full", "failed", "upstream_failed"),
    ] {
        let fr = open(&client, "check").await;
        let result = format!("{{\"changed\": {changed}}}");
        drive(&client, fr, "check", "succeeded", Some(&result)).await;
        assert_eq!(member(&client, fr, other).await.0, "skipped");
        drive(&client, fr, taken, ends, None).await;
        if join == "succeeded" {
            drive(&client, fr, "join", "succeeded", None).await;
        }
        let (state, error) = member(&client, fr, "join").await;
        assert_eq!(state, join, "{changed} {ends}: {error}");
        let want = if ends == "failed" {
            "failed"
        } else {
            "succeeded"
        };
        assert_eq!(flow_state(&client, fr).await, want);
    }
}

/// Two upstreams finishing in one statement (as the heartbeat declares a dead host's runs
/// lost), the same end written twice, and the safety net run on top: the member below them
/// has exactly one run (django-tasks-scheduler #418).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicate_successors_whatever_writes_the_upstreams_ends() {
    let (_db, client) = migrated_db().await;
    exec(&client, DIAMOND).await;
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", None).await;
    exec(
        &client,
        &format!(
            "UPDATE sisy.runs SET state = 'running', host = 'h' WHERE flow_run_id = {fr} AND state = 'pending';
             UPDATE sisy.runs SET state = 'lost', finished_at = now() WHERE flow_run_id = {fr} AND state = 'running';
             UPDATE sisy.runs SET state = 'lost', finished_at = now() WHERE flow_run_id = {fr} AND job_name IN ('b', 'c');"
        ),
    )
    .await;
    for _ in 0..3 {
        exec(&client, "SELECT sisy.flows_tend(interval '0 s')").await;
    }
    assert_eq!(runs_of(&client, fr, "cleanup").await, 1);
    drive(&client, fr, "cleanup", "succeeded", None).await;
    exec(&client, "SELECT sisy.flows_tend(interval '0 s')").await;
    assert_eq!(runs_of(&client, fr, "cleanup").await, 1);
    assert_eq!(flow_state(&client, fr).await, "failed");
}

/// The views: flow_members lists every member of the snapshot, `waiting` until reached;
/// flow_status counts members by state and names the failed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_views_show_waiting_members_counts_and_the_failed_ones() {
    let (_db, client) = migrated_db().await;
    exec(&client, DIAMOND).await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('tail', 'true');
                   INSERT INTO sisy.dependencies (job, upstream) VALUES ('tail', 'cleanup');",
    )
    .await;
    let fr = open(&client, "a").await;
    let states = async |client: &tokio_postgres::Client| -> Vec<(String, String)> {
        client
            .query(
                "SELECT job, state FROM sisy.flow_members WHERE flow_run_id = $1 ORDER BY job",
                &[&fr],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let s = states(&client).await;
    let want: Vec<(String, String)> = [
        ("a", "pending"),
        ("b", "waiting"),
        ("c", "waiting"),
        ("cleanup", "waiting"),
        ("tail", "waiting"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(s, want);
    drive(&client, fr, "a", "succeeded", None).await;
    drive(&client, fr, "b", "failed", None).await;
    exec(
        &client,
        &format!("UPDATE sisy.runs SET state = 'running', host = 'h' WHERE flow_run_id = {fr} AND job_name = 'c'"),
    )
    .await;
    let row = client
        .query_one(
            "SELECT state, members, waiting, pending, running, succeeded, failed, skipped, failed_members
               FROM sisy.flow_status WHERE id = $1",
            &[&fr],
        )
        .await
        .unwrap();
    let counts: Vec<i64> = (1..8).map(|i| row.get(i)).collect();
    assert_eq!(row.get::<_, String>(0), "running");
    assert_eq!(
        counts,
        [5, 2, 0, 1, 1, 1, 0],
        "members waiting pending running succeeded failed skipped"
    );
    assert_eq!(row.get::<_, Vec<String>>(8), ["b"]);
    finish(&client, fr, "c", "succeeded", None).await;
    drive(&client, fr, "cleanup", "succeeded", None).await;
    drive(&client, fr, "tail", "succeeded", None).await;
    let row = client
        .query_one(
            "SELECT state, succeeded, failed, failed_members, finished_at IS NOT NULL FROM sisy.flow_status WHERE id = $1",
            &[&fr],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert_eq!((row.get::<_, i64>(1), row.get::<_, i64>(2)), (4, 1));
    assert_eq!(row.get::<_, Vec<String>>(3), ["b"]);
    assert!(row.get::<_, bool>(4));
}

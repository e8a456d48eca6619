//! The safety net the guardians' tick calls (`sisy.flows_tend`, `sisy.flows_due_in`): flow
//! runs past their deadline timed out, running flow runs with final-but-undecided members
//! re-decided, hostile arguments, and its due time.

use super::{drive, exec, flow_state, member, open, runs_of};
use crate::util::migrated_db;

/// A member's end written with the triggers off (a restore, a hand fix): nothing decided it;
/// the safety net does, once, and ends the flow run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_tend_decides_what_a_final_but_undecided_member_left_waiting() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true'), ('c', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b');",
    )
    .await;
    let fr = open(&client, "a").await;
    exec(&client, "ALTER TABLE sisy.runs DISABLE TRIGGER USER").await;
    drive(&client, fr, "a", "succeeded", None).await;
    exec(&client, "ALTER TABLE sisy.runs ENABLE TRIGGER USER").await;
    assert_eq!(runs_of(&client, fr, "b").await, 0);
    // Not due yet: looked at less than `recheck` ago.
    let n: i32 = client
        .query_one("SELECT sisy.flows_tend()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let due: f64 = client
        .query_one("SELECT sisy.flows_due_in()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(due > 0.0 && due <= 30.0, "{due}");
    for _ in 0..3 {
        exec(&client, "SELECT sisy.flows_tend(interval '0 s')").await;
    }
    assert_eq!(runs_of(&client, fr, "b").await, 1);
    assert_eq!(member(&client, fr, "b").await.0, "pending");
    exec(&client, "ALTER TABLE sisy.runs DISABLE TRIGGER USER").await;
    drive(&client, fr, "b", "succeeded", None).await;
    exec(&client, "ALTER TABLE sisy.runs ENABLE TRIGGER USER").await;
    exec(&client, "SELECT sisy.flows_tend(interval '0 s')").await;
    drive(&client, fr, "c", "succeeded", None).await;
    assert_eq!(flow_state(&client, fr).await, "succeeded");
    assert_eq!(runs_of(&client, fr, "c").await, 1);
    let due: Option<f64> = client
        .query_one("SELECT sisy.flows_due_in()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(due, None, "nothing running, nothing due");
}

/// flow_timeout passed: pending members cancelled, running ones asked to die, the flow run
/// timed_out with the deadline in its error; nothing decided afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_tend_times_out_a_flow_run_past_its_deadline() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command, flow_timeout) VALUES ('a', 'true', '1 hour');
         INSERT INTO sisy.jobs (name, command) VALUES ('b', 'true'), ('c', 'true'), ('d', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'a'), ('d', 'b');",
    )
    .await;
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", None).await;
    exec(
        &client,
        &format!(
            "UPDATE sisy.runs SET state = 'running', host = 'h' WHERE flow_run_id = {fr} AND job_name = 'b';
             UPDATE sisy.flow_runs SET deadline = now() - interval '1 second' WHERE id = {fr};"
        ),
    )
    .await;
    let due: f64 = client
        .query_one("SELECT sisy.flows_due_in()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(due <= 0.0, "{due}");
    let n: i32 = client
        .query_one("SELECT sisy.flows_tend()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(flow_state(&client, fr).await, "timed_out");
    assert_eq!(member(&client, fr, "c").await.0, "cancelled");
    let asked: bool = client
        .query_one(
            "SELECT kill_requested_at IS NOT NULL FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'b'",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert!(asked);
    super::finish(&client, fr, "b", "succeeded", None).await;
    assert_eq!(
        runs_of(&client, fr, "d").await,
        0,
        "decided after the flow run ended"
    );
    assert_eq!(flow_state(&client, fr).await, "timed_out");
}

/// NULLs and silly values as arguments do not fail the tick's call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_tend_takes_nulls_and_silly_arguments() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a');",
    )
    .await;
    open(&client, "a").await;
    for call in [
        "SELECT sisy.flows_tend(NULL, NULL)",
        "SELECT sisy.flows_tend(interval '-1 day', 0)",
        "SELECT sisy.flows_tend(interval '1000 years', -5)",
        "SELECT sisy.flows_due_in(NULL)",
        "SELECT sisy.flows_due_in(interval '-1 day')",
    ] {
        client
            .query_one(call, &[])
            .await
            .unwrap_or_else(|e| panic!("{call}: {}", super::message(&e)));
    }
}

//! Control of flow runs with real guardians and real processes: `overlap = 'forbid'`,
//! flow_timeout and cancel_flow leaving no process behind, the events on sisy_events, a
//! condition over a missing result, and the graph edited mid-run.

use futures_util::StreamExt;
use serde_json::Value;
use tokio_postgres::{AsyncMessage, NoTls};

use super::guardians::{LONG, ended, running};
use super::{exec, flow_state, open, runs_of};
use crate::util::{
    Guardian, migrated_db, process_gone, processes_with_env, shared_dir, until_file, wait_for,
    wait_until,
};

/// overlap = 'forbid' on a root whose previous flow run still runs: the new flow run is
/// skipped and its root's process never starts; the earlier one carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_forbid_skips_a_flow_run_while_the_previous_one_runs() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let flag = dir.path().join("go");
    let _g = Guardian::start(&db, "g1", "capacity = 4");
    exec(
        &client,
        &format!(
            "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', '{}');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a');",
            until_file(&flag)
        ),
    )
    .await;
    let first = open(&client, "a").await;
    running(&client, first, "b").await;
    let second = open(&client, "a").await;
    assert_eq!(flow_state(&client, second).await, "skipped");
    let row = client
        .query_one(
            "SELECT state, started_at IS NULL FROM sisy.runs WHERE flow_run_id = $1",
            &[&second],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("skipped".into(), true)
    );
    std::fs::write(&flag, "").unwrap();
    assert_eq!(ended(&client, first).await, "succeeded");
    assert_eq!(flow_state(&client, second).await, "skipped");
}

/// flow_timeout: once the deadline passed, the safety net (sisy.flows_tend, the guardians'
/// tick) times the flow run out, its running member is killed and its process is gone, and
/// nothing after it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_timeout_kills_the_running_member_and_leaves_no_process() {
    let (db, client) = migrated_db().await;
    let tag = format!("timeout-{}", db.name);
    let _g = Guardian::start(&db, "g1", "capacity = 4");
    exec(
        &client,
        &format!(
            "INSERT INTO sisy.jobs (name, command, flow_timeout) VALUES ('a', 'true', '2 seconds');
             INSERT INTO sisy.jobs (name, command, kill_grace, max_retries, env)
                VALUES ('b', 'trap \"\" TERM; sleep 600', '1 second', 2, '{{\"FLOW_TAG\": \"{tag}\"}}');
             INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('cleanup', 'true', 'all_done');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('cleanup', 'b');"
        ),
    )
    .await;
    let fr = open(&client, "a").await;
    let pid = running(&client, fr, "b").await;
    // The guardian's tick sleeps until the deadline and calls sisy.flows_tend: nothing else
    // times the flow run out here.
    wait_until(
        &client,
        "the flow run to time out",
        LONG,
        || format!("SELECT state FROM sisy.flow_runs WHERE id = {fr}"),
        |s: String| s == "timed_out",
    )
    .await;
    let late: f64 = client
        .query_one(
            "SELECT extract(epoch FROM finished_at - deadline)::float8 FROM sisy.flow_runs WHERE id = $1",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        (0.0..5.0).contains(&late),
        "timed out {late} s after its deadline: not within a heartbeat"
    );
    let state = crate::util::wait_finished(
        &client,
        client
            .query_one(
                "SELECT id FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'b'",
                &[&fr],
            )
            .await
            .unwrap()
            .get(0),
        LONG,
    )
    .await;
    assert_eq!(state, "killed");
    wait_for("b's process to be gone", LONG, || process_gone(pid)).await;
    assert!(processes_with_env("FLOW_TAG", &tag).is_empty());
    assert_eq!(
        runs_of(&client, fr, "b").await,
        1,
        "a killed member was retried"
    );
    assert_eq!(
        runs_of(&client, fr, "cleanup").await,
        0,
        "decided after the flow run ended"
    );
    let error: String = client
        .query_one("SELECT error FROM sisy.flow_runs WHERE id = $1", &[&fr])
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("flow_timeout"), "{error}");
}

/// cancel_flow with a real process: killed, gone, nothing after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_flow_kills_the_running_member_and_leaves_no_process() {
    let (db, client) = migrated_db().await;
    let tag = format!("cancel-{}", db.name);
    let _g = Guardian::start(&db, "g1", "capacity = 4");
    exec(
        &client,
        &format!(
            "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true');
             INSERT INTO sisy.jobs (name, command, env) VALUES ('b', 'sleep 600', '{{\"FLOW_TAG\": \"{tag}\"}}');
             INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('c', 'true', 'all_done');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b');"
        ),
    )
    .await;
    let fr = open(&client, "a").await;
    let pid = running(&client, fr, "b").await;
    exec(&client, &format!("SELECT sisy.cancel_flow({fr})")).await;
    assert_eq!(flow_state(&client, fr).await, "cancelled");
    wait_for("b's process to be gone", LONG, || process_gone(pid)).await;
    let id: i64 = client
        .query_one(
            "SELECT id FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'b'",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        crate::util::wait_finished(&client, id, LONG).await,
        "killed"
    );
    assert_eq!(runs_of(&client, fr, "c").await, 0);
    assert!(processes_with_env("FLOW_TAG", &tag).is_empty());
}

/// Flow run state changes are published on sisy_events with the flow run's id, and every
/// run's event carries its flow run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_run_state_changes_are_published_with_their_flow_run_id() {
    let (db, client) = migrated_db().await;
    let (listener, mut connection) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(msg)) = messages.next().await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send(serde_json::from_str::<Value>(n.payload()).unwrap());
            }
        }
    });
    listener.batch_execute("LISTEN sisy_events").await.unwrap();
    let _g = Guardian::start(&db, "g1", "");
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'exit 1');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a');",
    )
    .await;
    let fr = open(&client, "a").await;
    let mut flow_events = Vec::new();
    let mut run_events = Vec::new();
    while flow_events.last().map(|e: &Value| e["new_state"].clone()) != Some(Value::from("failed"))
    {
        let event = tokio::time::timeout(LONG, rx.recv())
            .await
            .expect("an event within a minute")
            .expect("the listener is alive");
        if event.get("run_id").is_some() {
            run_events.push(event);
        } else {
            flow_events.push(event);
        }
    }
    let transitions: Vec<(Value, Value)> = flow_events
        .iter()
        .map(|e| (e["old_state"].clone(), e["new_state"].clone()))
        .collect();
    assert_eq!(
        transitions,
        [
            (Value::Null, "running".into()),
            ("running".into(), "failed".into())
        ]
    );
    for e in &flow_events {
        assert_eq!(e["flow_run_id"], fr);
        assert_eq!(e["root"], "a");
    }
    assert!(run_events.len() >= 6, "{run_events:?}");
    for e in &run_events {
        assert_eq!(e["flow_run_id"], fr, "{e}");
    }
    drop(listener);
}

/// Conditions with real runs: a job that writes no result has a NULL result, so an edge
/// with a condition counts as skipped; a `none_failed` join after that branch and one
/// without a condition runs; the flow run succeeds; flow_status counts it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_over_a_missing_result_skips_its_branch_and_the_join_runs() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "capacity = 4");
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('check', 'true'), ('full', 'true'), ('delta', 'true');
         INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('join', 'true', 'none_failed');
         INSERT INTO sisy.dependencies VALUES ('full', 'check', '$.changed > 100'), ('delta', 'check', NULL),
                                              ('join', 'full', NULL), ('join', 'delta', NULL);",
    )
    .await;
    let fr = open(&client, "check").await;
    assert_eq!(ended(&client, fr).await, "succeeded");
    let (state, error) = super::member(&client, fr, "full").await;
    assert_eq!(state, "skipped");
    assert!(error.contains("'check'"), "{error}");
    assert_eq!(super::member(&client, fr, "join").await.0, "succeeded");
    let row = client
        .query_one(
            "SELECT members, succeeded, skipped, failed, failed_members FROM sisy.flow_status WHERE id = $1",
            &[&fr],
        )
        .await
        .unwrap();
    let counts: Vec<i64> = (0..4).map(|i| row.get(i)).collect();
    assert_eq!(counts, [4, 3, 1, 0]);
    assert!(row.get::<_, Vec<String>>(4).is_empty());
}

/// Editing the graph while a real flow run runs: a member added below the running one is
/// not part of it, and is part of the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_mid_run_joins_the_next_flow_run_only() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let flag = dir.path().join("go");
    let _g = Guardian::start(&db, "g1", "capacity = 4");
    exec(
        &client,
        &format!(
            "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', '{}'), ('c', 'true');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a');",
            until_file(&flag)
        ),
    )
    .await;
    let first = open(&client, "a").await;
    running(&client, first, "b").await;
    exec(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('c', 'b')",
    )
    .await;
    std::fs::write(&flag, "").unwrap();
    assert_eq!(ended(&client, first).await, "succeeded");
    assert_eq!(runs_of(&client, first, "c").await, 0);
    let second = open(&client, "a").await;
    assert_eq!(ended(&client, second).await, "succeeded");
    assert_eq!(super::member(&client, second, "c").await.0, "succeeded");
}

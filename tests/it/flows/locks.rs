//! Lock order between statements that end runs of several flow runs at once (a heartbeat
//! declaring a dead host's runs lost, a tick expiring pending runs, the safety net timing
//! flow runs out): each takes the flow runs' locks, so two of them taking the same flow
//! runs in opposite orders would deadlock, and PostgreSQL would abort one of them.

use std::time::Duration;

use super::{backend_pid, blocked_or_done, drive, exec, message, open};
use crate::util::migrated_db;

/// The id of `job`'s run in flow run `fr`.
async fn run(client: &tokio_postgres::Client, fr: i64, job: &str) -> i64 {
    client
        .query_one(
            "SELECT id FROM sisy.runs WHERE flow_run_id = $1 AND job_name = $2",
            &[&fr, &job],
        )
        .await
        .unwrap()
        .get(0)
}

/// Two statements, each ending one run of flow run 1 and one of flow run 2, the first in
/// the order (1, 2), the second (2, 1), both queued behind a third session holding flow run
/// 1: once it lets go, both must complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_statements_ending_runs_of_the_same_flow_runs_in_opposite_orders_both_complete() {
    let (db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('a', 'true', 'allow');
         INSERT INTO sisy.jobs (name, command) VALUES ('p', 'true'), ('q', 'true'), ('s', 'true'), ('z', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('p', 'a'), ('q', 'a'), ('s', 'a'), ('z', 's');",
    )
    .await;
    let f1 = open(&client, "a").await;
    let f2 = open(&client, "a").await;
    drive(&client, f1, "a", "succeeded", None).await;
    drive(&client, f2, "a", "succeeded", None).await;
    // z of flow run 1 is decided last: its run id is above those of flow run 2.
    drive(&client, f1, "s", "succeeded", None).await;
    exec(
        &client,
        "UPDATE sisy.runs SET state = 'running', host = 'h' WHERE state = 'pending'",
    )
    .await;
    let (p1, p2) = (run(&client, f1, "p").await, run(&client, f2, "p").await);
    let (q2, z1) = (run(&client, f2, "q").await, run(&client, f1, "z").await);
    assert!(p1 < p2 && q2 < z1, "{p1} {p2} {q2} {z1}");

    let holder = db.connect().await;
    exec(&holder, "BEGIN").await;
    exec(
        &holder,
        &format!("SELECT 1 FROM sisy.flow_runs WHERE id = {f1} FOR UPDATE"),
    )
    .await;
    let end = |ids: [i64; 2]| {
        let db = db.clone();
        async move {
            let c = db.connect().await;
            let pid = backend_pid(&c).await;
            let task = tokio::spawn(async move {
                c.batch_execute(&format!(
                    "UPDATE sisy.runs SET state = 'lost', finished_at = now() WHERE id IN ({}, {})",
                    ids[0], ids[1]
                ))
                .await
                .map_err(|e| message(&e))
            });
            (pid, task)
        }
    };
    // The first queues on flow run 1 before the second takes flow run 2.
    let (pid, first) = end([p1, p2]).await;
    blocked_or_done(&client, pid, &first).await;
    let (pid, second) = end([q2, z1]).await;
    blocked_or_done(&client, pid, &second).await;
    exec(&holder, "COMMIT").await;
    let first = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_ok() && second.is_ok(), "{first:?} {second:?}");
}

/// Twelve sessions end twelve upstreams at the same instant (a barrier, then one UPDATE
/// each), round after round, and in every other round a thirteenth cancels the flow run
/// meanwhile: never a deadlock or an error, the join decided at most once (exactly once
/// when not cancelled), and a cancelled flow run left with nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_concurrent_finishes_and_a_cancel_never_deadlock_and_decide_the_join_once() {
    let (db, client) = migrated_db().await;
    let mut sql =
        "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('start', 'true', 'allow');
                   INSERT INTO sisy.jobs (name, command) VALUES ('join', 'true');"
            .to_string();
    for i in 0..12 {
        sql += &format!(
            "INSERT INTO sisy.jobs (name, command) VALUES ('u{i}', 'true');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('u{i}', 'start'), ('join', 'u{i}');"
        );
    }
    exec(&client, &sql).await;
    let mut sessions = Vec::new();
    for _ in 0..13 {
        sessions.push(std::sync::Arc::new(db.connect().await));
    }
    for round in 0..20 {
        let fr = open(&client, "start").await;
        drive(&client, fr, "start", "succeeded", None).await;
        exec(
            &client,
            &format!("UPDATE sisy.runs SET state = 'running', host = 'h' WHERE flow_run_id = {fr} AND state = 'pending'"),
        )
        .await;
        let cancel = round % 2 == 1;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(if cancel { 13 } else { 12 }));
        let mut tasks = Vec::new();
        for (i, session) in sessions
            .iter()
            .enumerate()
            .take(if cancel { 13 } else { 12 })
        {
            let (session, barrier) = (session.clone(), barrier.clone());
            let sql = if i == 12 {
                format!("SELECT sisy.cancel_flow({fr})")
            } else {
                format!(
                    "UPDATE sisy.runs SET state = 'succeeded', finished_at = now()
                      WHERE flow_run_id = {fr} AND job_name = 'u{i}' AND state = 'running'"
                )
            };
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                session.batch_execute(&sql).await.map_err(|e| message(&e))
            }));
        }
        for task in tasks {
            let r = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap();
            assert!(r.is_ok(), "round {round}: {r:?}");
        }
        let joins = super::runs_of(&client, fr, "join").await;
        let state = super::flow_state(&client, fr).await;
        if cancel {
            assert!(joins <= 1, "round {round}: {joins} runs of the join");
            assert_eq!(state, "cancelled", "round {round}");
            let pending: i64 = client
                .query_one(
                    "SELECT count(*) FROM sisy.runs WHERE flow_run_id = $1 AND state = 'pending'",
                    &[&fr],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(pending, 0, "round {round}");
        } else {
            assert_eq!(joins, 1, "round {round}");
            assert_eq!(state, "running", "round {round}: the join is pending");
            drive(&client, fr, "join", "succeeded", None).await;
            assert_eq!(super::flow_state(&client, fr).await, "succeeded");
        }
    }
}

/// Runs ended by one of several data-modifying CTEs of one statement (as the heartbeat
/// renews its own runs and declares a dead host's lost in one statement) move their flow
/// runs on, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_ended_inside_a_statement_with_several_updates_move_their_flow_runs_on() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('a', 'true', 'allow');
         INSERT INTO sisy.jobs (name, command) VALUES ('b', 'true'), ('c', 'true');
         INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('after', 'true', 'all_done');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'a'), ('after', 'b'), ('after', 'c');",
    )
    .await;
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", None).await;
    exec(
        &client,
        &format!(
            "UPDATE sisy.runs SET state = 'running', host = 'dead' WHERE flow_run_id = {fr} AND job_name = 'b';
             UPDATE sisy.runs SET state = 'running', host = 'alive' WHERE flow_run_id = {fr} AND job_name = 'c';"
        ),
    )
    .await;
    exec(
        &client,
        "WITH mine AS (
             UPDATE sisy.runs SET heartbeat_at = now() WHERE host = 'alive' AND state = 'running' RETURNING id
         ), lost AS (
             UPDATE sisy.runs SET state = 'lost', finished_at = now() WHERE host = 'dead' AND state = 'running' RETURNING id
         )
         SELECT (SELECT count(*) FROM mine), (SELECT count(*) FROM lost)",
    )
    .await;
    assert_eq!(super::member(&client, fr, "b").await.0, "lost");
    // b's outcome was recorded by that statement: c's end now decides the member after both.
    super::finish(&client, fr, "c", "succeeded", None).await;
    assert_eq!(super::runs_of(&client, fr, "after").await, 1);
    assert_eq!(super::member(&client, fr, "after").await.0, "pending");
}

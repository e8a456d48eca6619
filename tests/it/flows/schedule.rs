//! Flow runs opened by the guardians' scheduler: a scheduled root opens one flow run per
//! occurrence (members carry the root's logical time), and the scheduler's own insert of a
//! missed occurrence with the next one does not make the next one skip; a flow run skipped
//! by overlap is published once, as skipped.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{exec, flow_state};
use crate::util::{Guardian, Listener, migrated_db, wait_until};

/// The scheduler's one statement (runs_insert.sql) with a coalesced `expired` row for missed
/// occurrences and the next occurrence, `pending`, of a flow's root (overlap = 'forbid'): the
/// missed one's flow run ends at once (failed: its root never ran), and the next one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_occurrence_inserted_with_the_next_does_not_skip_the_next_flow_run() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a');",
    )
    .await;
    let now: DateTime<Utc> = client.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let missed = now - chrono::Duration::hours(2);
    let next = now - chrono::Duration::seconds(1);
    let ttl = chrono::Duration::minutes(5);
    client
        .execute(
            sisyphus::db::q::RUNS_INSERT,
            &[
                &vec![1i64, 1],
                &vec!["a", "a"],
                &vec!["default", "default"],
                &vec![missed, next],
                &vec![None::<String>, None],
                &vec![missed, next],
                &vec![missed + ttl, next + ttl],
                &vec!["expired", "pending"],
                &vec![Some("missed 120 occurrences".to_string()), None],
                &vec![120i64, 1],
            ],
        )
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT id, scheduled_for, state FROM sisy.flow_runs ORDER BY scheduled_for",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let states: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    assert_eq!(states, ["failed", "running"]);
    let pending: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE job_name = 'a' AND state = 'pending' AND flow_run_id = $1",
            &[&rows[1].get::<_, i64>(0)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1, "the next occurrence's root was skipped");
}

/// A root with a schedule (every second): each occurrence opens its own flow run, the
/// member's run carries the root's logical time, and every flow run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_root_opens_one_flow_run_per_occurrence() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "capacity = 4");
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('tick', 'true', 'allow');
         INSERT INTO sisy.jobs (name, command) VALUES ('tock', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('tock', 'tick');
         UPDATE sisy.jobs SET schedule = '* * * * * *' WHERE name = 'tick';",
    )
    .await;
    wait_until(
        &client,
        "three finished flow runs",
        Duration::from_secs(60),
        || "SELECT count(*) FROM sisy.flow_runs WHERE state = 'succeeded'".into(),
        |n: i64| n >= 3,
    )
    .await;
    exec(&client, "SELECT sisy.suspend('tick')").await;
    let rows = client
        .query(
            "SELECT f.id, f.scheduled_for, array_agg(r.scheduled_for = f.scheduled_for), count(r.*)
               FROM sisy.flow_runs f JOIN sisy.runs r ON r.flow_run_id = f.id
              WHERE f.state = 'succeeded' GROUP BY f.id",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        let same: Vec<bool> = row.get(2);
        assert!(
            same.iter().all(|s| *s),
            "a member's run is not at its flow's time"
        );
        assert_eq!(row.get::<_, i64>(3), 2);
        assert_eq!(flow_state(&client, row.get(0)).await, "succeeded");
    }
}

/// A flow run skipped by overlap = 'forbid' is published once, as skipped: a listener never
/// sees it `running` (an alert on "flow started" would fire for a flow that never ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_run_skipped_by_overlap_is_published_once_as_skipped() {
    let (db, client) = migrated_db().await;
    let mut listener = Listener::start(&db, "sisy_events").await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a');",
    )
    .await;
    let first = super::open(&client, "a").await;
    let second = super::open(&client, "a").await;
    assert_eq!(flow_state(&client, second).await, "skipped");
    // A marker after everything: all events before it have arrived.
    exec(
        &client,
        "SELECT pg_notify('sisy_events', '{\"marker\": true}')",
    )
    .await;
    let mut events = Vec::new();
    loop {
        let e = listener.next(Duration::from_secs(10), "the marker").await;
        let e: serde_json::Value = serde_json::from_str(&e).unwrap();
        if e.get("marker").is_some() {
            break;
        }
        if e.get("run_id").is_none() {
            events.push((
                e["flow_run_id"].clone(),
                e["old_state"].clone(),
                e["new_state"].clone(),
            ));
        }
    }
    use serde_json::Value;
    assert_eq!(
        events,
        [
            (Value::from(first), Value::Null, Value::from("running")),
            (Value::from(second), Value::Null, Value::from("skipped")),
        ]
    );
}

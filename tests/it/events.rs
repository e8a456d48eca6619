//! The event stream: every run state change is published on `sisy_events` as JSON.

use std::time::Duration;

use serde_json::Value;

use crate::util::{Guardian, Listener, migrated_db, trigger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_change_of_a_run_is_published() {
    let (db, client) = migrated_db().await;
    let mut events = Listener::start(&db, "sisy_events").await;
    let _g = Guardian::start(&db, "g1", "");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('evented', 'true')",
            &[],
        )
        .await
        .unwrap();
    let id = trigger(&client, "evented").await;
    let seen = events_of(&mut events, "evented", |seen| {
        seen.last().is_some_and(|e| e["new_state"] == "succeeded")
    })
    .await;
    let transitions: Vec<(Value, Value)> = seen
        .iter()
        .map(|e| (e["old_state"].clone(), e["new_state"].clone()))
        .collect();
    assert_eq!(
        transitions,
        vec![
            (Value::Null, "pending".into()),
            ("pending".into(), "running".into()),
            ("running".into(), "succeeded".into()),
        ]
    );
    for e in &seen {
        assert_eq!(e["run_id"], id);
        assert_eq!(e["job"], "evented");
    }
    assert_eq!(seen[2]["host"], "g1");
}

/// Events of `job` until `done` says the list is complete.
async fn events_of(
    events: &mut Listener,
    job: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    while !done(&seen) {
        let event = events.next(Duration::from_secs(60), "an event").await;
        let event: Value = serde_json::from_str(&event).unwrap();
        if event["job"] == job {
            seen.push(event);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_published_before_the_retry_it_causes() {
    let (db, client) = migrated_db().await;
    let mut events = Listener::start(&db, "sisy_events").await;
    let _g = Guardian::start(&db, "g1", "");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, max_retries, retry_delay)
             VALUES ('flaky', 'exit 3', 1, '10 milliseconds')",
            &[],
        )
        .await
        .unwrap();
    let first = trigger(&client, "flaky").await;
    let failed = |e: &Value| e["new_state"] == "failed";
    let seen = events_of(&mut events, "flaky", |seen| {
        seen.iter().filter(|e| failed(e)).count() == 2
    })
    .await;
    let steps: Vec<(bool, Value)> = seen
        .iter()
        .map(|e| (e["run_id"] == first, e["new_state"].clone()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (true, "pending".into()),
            (true, "running".into()),
            (true, "failed".into()),
            (false, "pending".into()),
            (false, "running".into()),
            (false, "failed".into()),
        ],
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_start_and_end_together_are_each_published_once_in_order() {
    const RUNS: usize = 24;
    let (db, client) = migrated_db().await;
    let mut events = Listener::start(&db, "sisy_events").await;
    let _g = Guardian::start(&db, "g1", "");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('many', 'true', 'allow')",
            &[],
        )
        .await
        .unwrap();
    // One statement inserts them all, so they are claimed, admitted and ended in batches.
    client
        .execute(
            "INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline)
             SELECT j.id, j.name, j.pool, now() + i * interval '1 microsecond', 'manual',
                    now(), now() + interval '10 minutes'
               FROM sisy.jobs j, generate_series(1, $1::bigint) i WHERE j.name = 'many'",
            &[&(RUNS as i64)],
        )
        .await
        .unwrap();
    let seen = events_of(&mut events, "many", |seen| {
        seen.iter()
            .filter(|e| e["new_state"] == "succeeded")
            .count()
            == RUNS
    })
    .await;
    let mut by_run: std::collections::BTreeMap<i64, Vec<(Value, Value)>> = Default::default();
    for e in &seen {
        by_run
            .entry(e["run_id"].as_i64().unwrap())
            .or_default()
            .push((e["old_state"].clone(), e["new_state"].clone()));
    }
    assert_eq!(by_run.len(), RUNS);
    for (id, steps) in by_run {
        assert_eq!(
            steps,
            vec![
                (Value::Null, "pending".into()),
                ("pending".into(), "running".into()),
                ("running".into(), "succeeded".into()),
            ],
            "run {id}"
        );
    }
}

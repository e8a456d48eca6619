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
    let mut seen = Vec::new();
    while seen.last().map(|e: &Value| e["new_state"].clone()) != Some(Value::from("succeeded")) {
        let event = events.next(Duration::from_secs(30), "an event").await;
        seen.push(serde_json::from_str::<Value>(&event).unwrap());
    }
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

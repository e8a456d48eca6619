//! The event stream: every run state change is published on `sisy_events` as JSON.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::util::{Guardian, migrated_db, trigger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_change_of_a_run_is_published() {
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
        let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("an event within 30 s")
            .expect("the listener is alive");
        seen.push(event);
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
    drop(listener);
}

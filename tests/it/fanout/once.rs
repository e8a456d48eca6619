//! Once and only once, with run states driven by SQL from many connections: the unique key
//! refuses a second run of an item (whatever writes it); items ending in concurrent
//! transactions decide their join exactly once, round after round; a cancel racing the
//! items' ends leaves nothing to run; and an item's end costs the same whatever the number
//! of items.

use super::{FLOW, exec, flow_state, item_runs, runs_of, start};
use crate::flows::refused;
use crate::util::{backend_cpu, migrated_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_an_item_is_refused_by_the_unique_key() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let fr = start(&client, Some("[\"a\", \"b\"]")).await;
    let copy = format!(
        "INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt, due_at,
                                deadline, flow_run_id, item, item_index)
         SELECT job_id, job_name, pool, scheduled_for, reason, attempt, due_at, deadline,
                flow_run_id, item, item_index
           FROM sisy.runs WHERE flow_run_id = {fr} AND job_name = 'each' AND item_index = 1"
    );
    let error = refused(&client, &copy).await;
    assert!(error.contains("runs_occurrence_key"), "{error}");
    assert_eq!(item_runs(&client, fr).await.len(), 2);
}

/// 40 items end in 8 concurrent connections, each item in a transaction of its own: the
/// join is decided exactly once and the flow run ends, every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_ending_in_concurrent_transactions_decide_their_join_once() {
    let (db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let list: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    let list = format!("[{}]", list.join(","));
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(db.connect().await);
    }
    for round in 0..5 {
        let fr = start(&client, Some(&list)).await;
        exec(
            &client,
            &format!(
                "UPDATE sisy.runs SET state = 'running', host = 'h', started_at = now()
                  WHERE flow_run_id = {fr} AND job_name = 'each'"
            ),
        )
        .await;
        let mut tasks = Vec::new();
        for (c, conn) in conns.drain(..).enumerate() {
            tasks.push(tokio::spawn(async move {
                for i in (c..40).step_by(8) {
                    conn.execute(
                        "UPDATE sisy.runs SET state = 'succeeded', finished_at = now(), exit_code = 0,
                                result = to_jsonb(item_index)
                          WHERE flow_run_id = $1 AND job_name = 'each' AND item_index = $2",
                        &[&fr, &(i as i32)],
                    )
                    .await
                    .unwrap();
                }
                conn
            }));
        }
        for t in tasks {
            conns.push(t.await.unwrap());
        }
        assert_eq!(runs_of(&client, fr, "join").await, 1, "round {round}");
        super::drive(&client, fr, "join", "succeeded", None).await;
        assert_eq!(flow_state(&client, fr).await, "succeeded", "round {round}");
        let inputs = super::join_inputs(&client, fr).await;
        let want: Vec<i64> = (0..40).collect();
        assert_eq!(inputs["each"], serde_json::json!(want), "round {round}");
    }
}

/// Items of a large fan-out ending one statement each (as guardians write them): each end
/// must not cost a scan of every item, or 10,000 items cost n² (the drain would crawl).
/// Judged by the server process's CPU time (a wall-time ratio read 3.2 on a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_items_one_by_one_costs_no_more_with_more_items() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    // Two flow runs at once.
    exec(
        &client,
        "UPDATE sisy.jobs SET overlap = 'allow' WHERE name = 'list'",
    )
    .await;
    let mut per_item = Vec::new();
    for n in [500usize, 5_000] {
        let list: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let fr = start(&client, Some(&format!("[{}]", list.join(",")))).await;
        exec(
            &client,
            &format!(
                "UPDATE sisy.runs SET state = 'running', host = 'h', started_at = now()
                  WHERE flow_run_id = {fr} AND job_name = 'each'"
            ),
        )
        .await;
        let sample = 300;
        // By id, as a guardian records an end: the lookup itself must not grow with the items.
        let ids: Vec<i64> = client
            .query(
                "SELECT id FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'each'
                  ORDER BY item_index LIMIT $2",
                &[&fr, &(sample as i64)],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let began = backend_cpu(&client).await;
        for id in &ids {
            client
                .execute(
                    "UPDATE sisy.runs SET state = 'succeeded', finished_at = now(), exit_code = 0
                      WHERE id = $1",
                    &[id],
                )
                .await
                .unwrap();
        }
        let each = (backend_cpu(&client).await - began) / sample;
        eprintln!("{n} items: {each:?} of CPU per item ended");
        per_item.push(each);
    }
    // Ten times the items: allow twice the cost per item (noise), not ten times.
    assert!(per_item[1] < per_item[0] * 3, "{per_item:?}");
}

/// A cancel while 40 items end in 8 concurrent connections: whatever the interleaving, the
/// flow run ends cancelled, nothing is left pending and the join is never left to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_items_ending_leaves_nothing_to_run() {
    let (db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let list: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    let fr = start(&client, Some(&format!("[{}]", list.join(",")))).await;
    exec(
        &client,
        &format!(
            "UPDATE sisy.runs SET state = 'running', host = 'h', started_at = now()
              WHERE flow_run_id = {fr} AND job_name = 'each'"
        ),
    )
    .await;
    let mut tasks = Vec::new();
    for c in 0..8i32 {
        let conn = db.connect().await;
        tasks.push(tokio::spawn(async move {
            for i in (c..40).step_by(8) {
                // A killed item stays killed: only running ones end.
                conn.execute(
                    "UPDATE sisy.runs SET state = 'succeeded', finished_at = now(), exit_code = 0
                      WHERE flow_run_id = $1 AND job_name = 'each' AND item_index = $2
                        AND state = 'running'",
                    &[&fr, &i],
                )
                .await
                .unwrap();
            }
        }));
    }
    tokio::task::yield_now().await;
    exec(&client, &format!("SELECT sisy.cancel_flow({fr})")).await;
    for t in tasks {
        t.await.unwrap();
    }
    // What the cancel asked to kill, its guardian kills.
    exec(
        &client,
        &format!(
            "UPDATE sisy.runs SET state = 'killed', finished_at = now()
              WHERE flow_run_id = {fr} AND state = 'running' AND kill_requested_at IS NOT NULL"
        ),
    )
    .await;
    assert_eq!(flow_state(&client, fr).await, "cancelled");
    let open: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE flow_run_id = $1 AND state IN ('pending', 'running')",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "{:?}", item_runs(&client, fr).await);
    let join: Vec<String> = client
        .query(
            "SELECT state FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'join'",
            &[&fr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(join.is_empty() || join == ["cancelled"], "{join:?}");
}

//! Cancel and rerun in the middle of a fan-out, with run states driven by SQL: a cancel
//! cancels the pending items and kills the running ones (no retry), a rerun runs again only
//! the items that did not succeed, and a rerun from upstream evaluates the items afresh.

use serde_json::json;

use super::{
    FLOW, counts, end_items, exec, finish_items, flow_state, item_runs, join_inputs, member,
    runs_of, start,
};
use crate::flows::refused;
use crate::util::migrated_db;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_the_middle_cancels_pending_items_and_kills_running_ones() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    exec(
        &client,
        "UPDATE sisy.jobs SET max_retries = 3, retry_delay = '0' WHERE name = 'each'",
    )
    .await;
    let fr = start(&client, Some("[0, 1, 2, 3, 4, 5]")).await;
    end_items(&client, fr, &[0, 1], "succeeded").await;
    exec(
        &client,
        &format!(
            "UPDATE sisy.runs SET state = 'running', host = 'h', started_at = now()
              WHERE flow_run_id = {fr} AND item_index IN (2, 3)"
        ),
    )
    .await;
    exec(&client, &format!("SELECT sisy.cancel_flow({fr})")).await;
    assert_eq!(flow_state(&client, fr).await, "cancelled");
    let by_state = |rows: &[(Option<i32>, Option<String>, i32, String)], s: &str| -> Vec<i32> {
        rows.iter()
            .filter(|r| r.3 == s)
            .filter_map(|r| r.0)
            .collect()
    };
    let runs = item_runs(&client, fr).await;
    assert_eq!(by_state(&runs, "cancelled"), vec![4, 5], "{runs:?}");
    assert_eq!(by_state(&runs, "running"), vec![2, 3], "{runs:?}");
    let asked: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE flow_run_id = $1 AND state = 'running'
                AND kill_requested_at IS NOT NULL",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(asked, 2, "the running items' kill was not requested");
    // Their guardian kills them: no retry although max_retries = 3, nothing decided.
    finish_items(&client, fr, &[2, 3], "killed").await;
    assert_eq!(
        runs_of(&client, fr, "each").await,
        6,
        "a killed item was retried"
    );
    assert_eq!(runs_of(&client, fr, "join").await, 0);
    exec(&client, "SELECT sisy.flows_tend(interval '0 s')").await;
    assert_eq!(runs_of(&client, fr, "join").await, 0);
    assert_eq!(flow_state(&client, fr).await, "cancelled");
}

/// Items 1 and 3 of five fail; the rerun runs those two again (attempt 2, same items) and
/// keeps the others' results; the join then gets all five in item order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_in_the_middle_runs_again_only_the_failed_items() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let fr = start(&client, Some(r#"["a", "b", "c", "d", "e"]"#)).await;
    end_items(&client, fr, &[1], "failed").await;
    // Not while it runs.
    let error = refused(&client, &format!("SELECT sisy.rerun_flow({fr})")).await;
    assert!(error.contains("still running"), "{error}");
    end_items(&client, fr, &[0, 2, 4], "succeeded").await;
    end_items(&client, fr, &[3], "timed_out").await;
    assert_eq!(flow_state(&client, fr).await, "failed");
    let requeued: i32 = client
        .query_one("SELECT sisy.rerun_flow($1)", &[&fr])
        .await
        .unwrap()
        .get(0);
    assert_eq!(requeued, 2, "each and join");
    let pending: Vec<_> = item_runs(&client, fr)
        .await
        .into_iter()
        .filter(|r| r.3 == "pending")
        .collect();
    assert_eq!(
        pending,
        vec![
            (Some(1), Some("\"b\"".into()), 2, "pending".into()),
            (Some(3), Some("\"d\"".into()), 2, "pending".into()),
        ]
    );
    assert_eq!(runs_of(&client, fr, "each").await, 7);
    assert_eq!(counts(&client, fr).await, [5, 3, 0, 0, 2].map(Some));
    end_items(&client, fr, &[1, 3], "succeeded").await;
    assert_eq!(member(&client, fr, "join").await.0, "pending");
    let got = |x: &str| json!({ "got": x });
    assert_eq!(
        join_inputs(&client, fr).await,
        json!({ "each": [got("a"), got("b"), got("c"), got("d"), got("e")] })
    );
    super::drive(&client, fr, "join", "succeeded", None).await;
    assert_eq!(flow_state(&client, fr).await, "succeeded");
    assert_eq!(
        runs_of(&client, fr, "each").await,
        7,
        "a succeeded item ran again"
    );
}

/// A rerun from the upstream decides the fan-out afresh: the items of the new list, the old
/// attempts no longer counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_from_upstream_evaluates_the_items_again() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let fr = start(&client, Some("[1, 2, 3]")).await;
    end_items(&client, fr, &[0], "failed").await;
    end_items(&client, fr, &[1, 2], "succeeded").await;
    assert_eq!(flow_state(&client, fr).await, "failed");
    let requeued: i32 = client
        .query_one("SELECT sisy.rerun_flow($1, 'list')", &[&fr])
        .await
        .unwrap()
        .get(0);
    assert_eq!(requeued, 3);
    super::drive(&client, fr, "list", "succeeded", Some(r#"["new"]"#)).await;
    let fresh: Vec<_> = item_runs(&client, fr)
        .await
        .into_iter()
        .filter(|r| r.3 == "pending")
        .collect();
    assert_eq!(
        fresh,
        vec![(Some(0), Some("\"new\"".into()), 2, "pending".into())]
    );
    assert_eq!(counts(&client, fr).await, [1, 0, 0, 0, 1].map(Some));
    end_items(&client, fr, &[0], "succeeded").await;
    assert_eq!(
        join_inputs(&client, fr).await,
        json!({ "each": [{ "got": "new" }] })
    );
}

/// A fan-out cancelled in the middle, then rerun: its succeeded items are kept, the killed
/// and cancelled ones run again (attempt 2, same items).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_after_a_cancel_runs_again_the_killed_and_cancelled_items_only() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let fr = start(&client, Some("[0, 1, 2, 3, 4]")).await;
    end_items(&client, fr, &[0, 1], "succeeded").await;
    exec(
        &client,
        &format!(
            "UPDATE sisy.runs SET state = 'running', host = 'h', started_at = now()
              WHERE flow_run_id = {fr} AND item_index = 2"
        ),
    )
    .await;
    exec(&client, &format!("SELECT sisy.cancel_flow({fr})")).await;
    finish_items(&client, fr, &[2], "killed").await;
    let requeued: i32 = client
        .query_one("SELECT sisy.rerun_flow($1)", &[&fr])
        .await
        .unwrap()
        .get(0);
    assert_eq!(requeued, 2, "each and join");
    let again: Vec<(i32, i32)> = item_runs(&client, fr)
        .await
        .into_iter()
        .filter(|r| r.3 == "pending")
        .map(|r| (r.0.unwrap(), r.2))
        .collect();
    assert_eq!(again, vec![(2, 2), (3, 2), (4, 2)]);
    end_items(&client, fr, &[], "succeeded").await;
    assert_eq!(
        join_inputs(&client, fr).await,
        json!({ "each": (0..5).map(|i| json!({ "got": i })).collect::<Vec<_>>() })
    );
}

/// flow_timeout passing in the middle of a fan-out: running items killed, pending ones
/// cancelled, none retried, the flow run timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_timeout_in_the_middle_of_a_fan_out_ends_every_item() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    exec(
        &client,
        "UPDATE sisy.jobs SET flow_timeout = '1 hour' WHERE name = 'list';
         UPDATE sisy.jobs SET max_retries = 3, retry_delay = '0' WHERE name = 'each';",
    )
    .await;
    let fr = start(&client, Some("[0, 1, 2, 3]")).await;
    end_items(&client, fr, &[0], "succeeded").await;
    exec(
        &client,
        &format!(
            "UPDATE sisy.runs SET state = 'running', host = 'h', started_at = now()
              WHERE flow_run_id = {fr} AND item_index = 1;
             UPDATE sisy.flow_runs SET deadline = now() - interval '1 s' WHERE id = {fr};
             SELECT sisy.flows_tend(interval '0 s');"
        ),
    )
    .await;
    assert_eq!(flow_state(&client, fr).await, "timed_out");
    finish_items(&client, fr, &[1], "killed").await;
    let states: Vec<String> = item_runs(&client, fr)
        .await
        .into_iter()
        .map(|r| r.3)
        .collect();
    assert_eq!(states, ["succeeded", "killed", "cancelled", "cancelled"]);
    assert_eq!(runs_of(&client, fr, "join").await, 0);
}

/// rerun_flow from the fan-out member itself after all its items succeeded and the join
/// failed: asked for by name, the member runs again (as a plain member would), then the join;
/// the flow run does not stall with nothing to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_from_a_fan_out_member_whose_items_all_succeeded_runs_it_again() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let fr = start(&client, Some("[1, 2]")).await;
    end_items(&client, fr, &[], "succeeded").await;
    super::drive(&client, fr, "join", "failed", None).await;
    assert_eq!(flow_state(&client, fr).await, "failed");
    let requeued: i32 = client
        .query_one("SELECT sisy.rerun_flow($1, 'each')", &[&fr])
        .await
        .unwrap()
        .get(0);
    assert_eq!(requeued, 2, "each and join");
    let again: Vec<(i32, i32)> = item_runs(&client, fr)
        .await
        .into_iter()
        .filter(|r| r.3 == "pending")
        .map(|r| (r.0.unwrap(), r.2))
        .collect();
    assert_eq!(
        again,
        vec![(0, 2), (1, 2)],
        "the items asked for did not run again; join {:?}, flow run {}",
        member(&client, fr, "join").await,
        flow_state(&client, fr).await
    );
    end_items(&client, fr, &[], "succeeded").await;
    super::drive(&client, fr, "join", "succeeded", None).await;
    assert_eq!(flow_state(&client, fr).await, "succeeded");
}

/// The job of a fan-out deleted while its items wait: the flow run still ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_whose_job_is_deleted_mid_run_still_ends() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let fr = start(&client, Some("[1, 2, 3]")).await;
    end_items(&client, fr, &[0], "succeeded").await;
    exec(
        &client,
        "DELETE FROM sisy.dependencies WHERE job = 'each' OR upstream = 'each';
         DELETE FROM sisy.jobs WHERE name = 'each';
         SELECT sisy.flows_tend(interval '0 s');",
    )
    .await;
    let pending: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE flow_run_id = $1 AND state IN ('pending', 'running')",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    let state = flow_state(&client, fr).await;
    assert!(
        pending == 0 && state != "running",
        "{pending} runs left pending, flow run {state}: {:?}",
        item_runs(&client, fr).await
    );
}

//! Hostile fan-outs, with run states driven by SQL: huge string items, unicode items, a
//! foreach over a NULL result, a fan-out member whose upstream failed (never evaluated), a
//! fan-out member with `continue_on_failure`, and a foreach refused where it cannot work.

use serde_json::json;

use super::{
    FLOW, counts, end_items, exec, flow_state, item_runs, join_inputs, member, runs_of, start,
};
use crate::flows::refused;
use crate::util::migrated_db;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_string_items_are_kept_whole_and_reach_the_join() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    // Three items of 1 MB each (a list of file contents rather than file paths).
    let huge: Vec<String> = (0..3).map(|i| format!("{i}").repeat(1 << 20)).collect();
    let fr = start(&client, Some(&serde_json::to_string(&huge).unwrap())).await;
    let runs = item_runs(&client, fr).await;
    assert_eq!(runs.len(), 3);
    for (i, run) in runs.iter().enumerate() {
        let item: String = serde_json::from_str(run.1.as_deref().unwrap()).unwrap();
        assert!(
            item == huge[i],
            "item {i} was altered ({} bytes)",
            item.len()
        );
    }
    end_items(&client, fr, &[], "succeeded").await;
    let inputs = join_inputs(&client, fr).await;
    let got: Vec<&str> = inputs["each"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["got"].as_str().unwrap())
        .collect();
    assert!(got == huge.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_items_and_odd_json_values_are_items_as_they_are() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let list = json!([
        "日本語のファイル.txt",
        "emoji 🦀👩‍👩‍👧",
        "rtl \u{202e}gnp.exe",
        "e\u{301} combining",
        "control \u{1}\u{1f} and \"quotes\" and \\ and '; DROP TABLE sisy.runs; --",
        "\u{10ffff}",
        "",
        null,
        {"nested": {"deep": [1, 2, {"x": null}]}},
        [],
        1e300,
        -0.0,
        true
    ]);
    let fr = start(&client, Some(&list.to_string())).await;
    let runs = item_runs(&client, fr).await;
    let items: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| serde_json::from_str(r.1.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(json!(items), list);
    assert_eq!(
        runs.iter().map(|r| r.0.unwrap()).collect::<Vec<_>>(),
        (0..13).collect::<Vec<_>>()
    );
    end_items(&client, fr, &[], "succeeded").await;
    let inputs = join_inputs(&client, fr).await;
    let back: Vec<serde_json::Value> = inputs["each"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["got"].clone())
        .collect();
    assert_eq!(json!(back), list);
}

/// An upstream that wrote no result: `{"list": null}`. There is no list, so no item may run
/// with a made-up `null` item (lax jsonpath wraps a null into a one-item list): the member is
/// either an empty fan-out (skipped) or fails saying there was nothing to iterate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreach_over_no_result_runs_no_item() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let fr = start(&client, None).await;
    let runs = item_runs(&client, fr).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        runs[0].0.is_none() && matches!(runs[0].3.as_str(), "skipped" | "failed"),
        "a NULL result made items: {runs:?}"
    );
    assert_ne!(member(&client, fr, "join").await.0, "none");
}

/// An explicit `null` in a list is an item like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_inside_a_list_is_an_item() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let fr = start(&client, Some("[null, 1]")).await;
    let runs = item_runs(&client, fr).await;
    assert_eq!(
        runs,
        vec![
            (Some(0), Some("null".into()), 1, "pending".into()),
            (Some(1), Some("1".into()), 1, "pending".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_whose_upstream_failed_is_not_evaluated() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    // A path that would fail if evaluated: it must not be.
    exec(
        &client,
        "UPDATE sisy.jobs SET foreach = 'strict $.nothing[*]' WHERE name = 'each'",
    )
    .await;
    let fr = super::open(&client, "list").await;
    super::drive(&client, fr, "list", "failed", Some("[1, 2]")).await;
    let runs = item_runs(&client, fr).await;
    assert_eq!(runs, vec![(None, None, 1, "upstream_failed".to_string())]);
    let (_, error) = member(&client, fr, "each").await;
    assert!(!error.contains("foreach"), "evaluated: {error}");
    assert_eq!(
        counts(&client, fr).await[0],
        None,
        "items of an undecided fan-out"
    );
    assert_eq!(member(&client, fr, "join").await.0, "upstream_failed");
    assert_eq!(flow_state(&client, fr).await, "failed");
}

/// `continue_on_failure` on a fan-out member: an item failing does not stop the flow; the
/// join runs and gets every item's result (the failed one's too), in item order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_with_continue_on_failure_lets_the_join_run_after_a_failed_item() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    exec(
        &client,
        "UPDATE sisy.jobs SET continue_on_failure = true WHERE name = 'each'",
    )
    .await;
    let fr = start(&client, Some("[10, 20, 30]")).await;
    end_items(&client, fr, &[1], "failed").await;
    assert_eq!(
        runs_of(&client, fr, "join").await,
        0,
        "decided before every item was final"
    );
    end_items(&client, fr, &[0, 2], "succeeded").await;
    assert_eq!(counts(&client, fr).await, [3, 2, 1, 0, 0].map(Some));
    assert_eq!(member(&client, fr, "join").await.0, "pending");
    assert_eq!(
        join_inputs(&client, fr).await,
        json!({ "each": [{ "got": 10 }, { "got": 20 }, { "got": 30 }] })
    );
    super::drive(&client, fr, "join", "succeeded", None).await;
    assert_eq!(flow_state(&client, fr).await, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreach_that_cannot_work_is_refused_with_a_message_naming_the_column() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    for (sql, says) in [
        (
            "UPDATE sisy.jobs SET target = 'all' WHERE name = 'each'",
            "target",
        ),
        (
            "UPDATE sisy.jobs SET max_concurrency = 0 WHERE name = 'each'",
            "max_concurrency",
        ),
    ] {
        let error = refused(&client, sql).await;
        assert!(
            error.contains(says) && error.contains("sisy.jobs"),
            "{sql}: {error}"
        );
    }
    let error = refused(
        &client,
        "UPDATE sisy.jobs SET foreach = '$.[' WHERE name = 'each'",
    )
    .await;
    assert!(error.contains("jsonpath"), "{error}");
}

/// The foreach is the flow run's snapshot: changing (or clearing) the job's foreach while a
/// flow run is open changes nothing for it; the next flow run uses the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreach_changed_mid_flow_applies_from_the_next_flow_run() {
    let (_db, client) = migrated_db().await;
    exec(&client, FLOW).await;
    let fr = super::open(&client, "list").await;
    exec(
        &client,
        "UPDATE sisy.jobs SET foreach = NULL WHERE name = 'each'",
    )
    .await;
    super::drive(&client, fr, "list", "succeeded", Some("[1, 2, 3]")).await;
    assert_eq!(item_runs(&client, fr).await.len(), 3);
    end_items(&client, fr, &[], "succeeded").await;
    super::drive(&client, fr, "join", "succeeded", None).await;
    let next = start(&client, Some("[1, 2, 3]")).await;
    assert_eq!(
        item_runs(&client, next).await,
        vec![(None, None, 1, "pending".to_string())]
    );
    assert_eq!(counts(&client, next).await[0], None);
}

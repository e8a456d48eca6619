//! The fan-out CLI with the real `sisy` binary against a real database: `jobs add/edit
//! --foreach --max-concurrency` (shown by `jobs show`, refused with the database's own words
//! and nothing written), a fan-out member's items counted by `flows show` and drawn as one
//! node by `flows plot` (also with 10,000 items, fast), and item runs in `runs list/show`.
//! Without a guardian: the upstream's run is finished in SQL with a result, the database's
//! triggers decide the fan-out member and write its item runs, as they do for a guardian.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::cli::{fails, json, ok, sisy_on};
use crate::pg::TestDb;
use crate::util::migrated_db;

/// `list` (a root) and `transform` (one run per file `list` found).
fn declare_flow(db: &TestDb) {
    ok(db, &["jobs", "add", "list", "--command", "true"]);
    ok(
        db,
        &[
            "jobs",
            "add",
            "transform",
            "--command",
            "true",
            "--after",
            "list",
            "--foreach",
            "$.list.files[*]",
        ],
    );
}

/// Triggers `list`, finishes its run with `{"files": files}` as a guardian would record it;
/// returns the flow run's id once `transform` has its item runs.
async fn run_list(db: &TestDb, client: &Client, files: &[Value]) -> i64 {
    let run: i64 = ok(db, &["jobs", "trigger", "list"]).trim().parse().unwrap();
    let result = json!({ "files": files });
    client
        .execute(
            "UPDATE sisy.runs SET state = 'succeeded', host = 'h1', started_at = now(),
                    finished_at = now(), exit_code = 0, result = $2
              WHERE id = $1",
            &[&run, &result],
        )
        .await
        .unwrap();
    client
        .query_one("SELECT flow_run_id FROM sisy.runs WHERE id = $1", &[&run])
        .await
        .unwrap()
        .get::<_, Option<i64>>(0)
        .expect("triggering a root opens a flow run")
}

/// Sets the item runs of `transform` with index in `range` to `state`.
async fn set_items(client: &Client, flow: i64, range: std::ops::Range<i32>, state: &str) {
    let finished = if state == "running" { "NULL" } else { "now()" };
    let n = client
        .execute(
            &format!(
                "UPDATE sisy.runs SET state = $4, host = 'h1', started_at = now(),
                        finished_at = {finished}
                  WHERE flow_run_id = $1 AND job_name = 'transform'
                    AND item_index >= $2 AND item_index < $3"
            ),
            &[&flow, &range.start, &range.end, &state],
        )
        .await
        .unwrap();
    assert_eq!(n as i32, range.end - range.start, "item runs {range:?}");
}

/// The `transform` member of `flows show --json`.
fn transform_member(db: &TestDb, flow: i64) -> Value {
    let shown = json(db, &["flows", "show", &flow.to_string()]);
    shown["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["job"] == "transform")
        .cloned()
        .expect("transform is a member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_foreach_and_max_concurrency_are_set_shown_cleared_and_refused() {
    let (db, client) = migrated_db().await;
    declare_flow(&db);
    ok(
        &db,
        &["jobs", "edit", "transform", "--max-concurrency", "5"],
    );
    let shown = json(&db, &["jobs", "show", "transform"]);
    assert_eq!(shown["foreach"], "$.\"list\".\"files\"[*]", "{shown}");
    assert_eq!(shown["max_concurrency"], 5, "{shown}");
    let human = ok(&db, &["jobs", "show", "transform"]);
    assert!(human.contains("max_concurrency"), "{human}");
    assert!(human.contains("$.\"list\".\"files\"[*]"), "{human}");

    // Refused values: the database's message, exit 1, nothing changed.
    fails(
        &db,
        &["jobs", "edit", "transform", "--max-concurrency", "0"],
        1,
        &["max_concurrency must be at least 1", "nothing was changed"],
    );
    fails(
        &db,
        &["jobs", "edit", "transform", "--max-concurrency", "many"],
        1,
        &[
            "invalid input syntax for type integer",
            "nothing was changed",
        ],
    );
    fails(
        &db,
        &[
            "jobs",
            "edit",
            "transform",
            "--foreach",
            "$.files[",
            "--command",
            "false",
        ],
        1,
        &["jsonpath", "nothing was changed"],
    );
    fails(
        &db,
        &["jobs", "edit", "transform", "--target", "all"],
        1,
        &["sisy.jobs.foreach", "use target 'any'"],
    );
    let after = json(&db, &["jobs", "show", "transform"]);
    assert_eq!(after["max_concurrency"], 5);
    assert_eq!(after["command"], "true");
    assert_eq!(after["target"], "any");

    // On add, a refused value leaves no job behind.
    fails(
        &db,
        &[
            "jobs",
            "add",
            "capped",
            "--command",
            "true",
            "--max-concurrency=-3",
        ],
        1,
        &["max_concurrency must be at least 1", "nothing was created"],
    );
    fails(
        &db,
        &[
            "jobs",
            "add",
            "each",
            "--command",
            "true",
            "--after",
            "list",
            "--foreach",
            "][",
        ],
        1,
        &["jsonpath", "nothing was created"],
    );
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.jobs WHERE name IN ('capped', 'each')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "a refused add left a job behind");

    // '' clears both.
    ok(
        &db,
        &[
            "jobs",
            "edit",
            "transform",
            "--foreach",
            "",
            "--max-concurrency",
            "",
        ],
    );
    let cleared = json(&db, &["jobs", "show", "transform"]);
    assert_eq!(cleared["foreach"], Value::Null, "{cleared}");
    assert_eq!(cleared["max_concurrency"], Value::Null, "{cleared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_show_and_plot_count_a_fan_out_members_items() {
    let (db, client) = migrated_db().await;
    declare_flow(&db);
    // Before any run: the root's graph marks the fan-out member.
    let dot = ok(&db, &["flows", "plot", "list"]);
    assert!(
        dot.contains(
            "\"transform\" [label=\"transform\\nforeach $.\\\"list\\\".\\\"files\\\"[*]\""
        ),
        "{dot}"
    );

    let files: Vec<Value> = (0..10).map(|i| json!(format!("f{i}.csv"))).collect();
    let flow = run_list(&db, &client, &files).await;
    set_items(&client, flow, 0..3, "succeeded").await;
    set_items(&client, flow, 3..4, "failed").await;
    set_items(&client, flow, 4..10, "running").await;

    let m = transform_member(&db, flow);
    assert_eq!(
        (
            &m["items"],
            &m["items_succeeded"],
            &m["items_failed"],
            &m["items_running"],
            &m["items_pending"]
        ),
        (&json!(10), &json!(3), &json!(1), &json!(6), &json!(0)),
        "{m}"
    );
    let human = ok(&db, &["flows", "show", &flow.to_string()]);
    let line = human
        .lines()
        .find(|l| l.starts_with("transform"))
        .expect("a line for transform");
    assert!(
        line.contains("3/10 succeeded, 1 failed, 6 running"),
        "{human}"
    );
    let list_line = human.lines().find(|l| l.starts_with("list")).unwrap();
    assert!(!list_line.contains("succeeded,"), "{human}");

    let dot = ok(&db, &["flows", "plot", &flow.to_string()]);
    assert!(
        dot.contains("[label=\"transform ×10\\n3 succeeded, 1 failed, 6 running\\nrunning\""),
        "{dot}"
    );
    let svg = ok(
        &db,
        &["flows", "plot", &flow.to_string(), "--format", "svg"],
    );
    assert!(svg.contains("transform ×10"), "{svg}");
    let graph = json(&db, &["flows", "plot", &flow.to_string()]);
    assert_eq!(graph["nodes"].as_array().unwrap().len(), 2, "{graph}");

    // Once every item is final, the flow run ends (one item failed); the next one finds an
    // empty list: one skipped row, "no items".
    set_items(&client, flow, 4..10, "succeeded").await;
    let human = ok(&db, &["flows", "show", &flow.to_string()]);
    assert!(human.contains("9/10 succeeded, 1 failed"), "{human}");
    let flow = run_list(&db, &client, &[]).await;
    let m = transform_member(&db, flow);
    assert_eq!(m["items"], 0, "{m}");
    let human = ok(&db, &["flows", "show", &flow.to_string()]);
    assert!(human.contains("no items"), "{human}");
}

/// A member of 10,000 items is still one node, and `show` and `plot` answer at once: they
/// read the counts, not the runs one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_item_member_is_one_node_drawn_fast() {
    let (db, client) = migrated_db().await;
    declare_flow(&db);
    let files: Vec<Value> = (0..10_000).map(|i| json!({ "n": i })).collect();
    let flow = run_list(&db, &client, &files).await;
    set_items(&client, flow, 0..2_500, "succeeded").await;
    set_items(&client, flow, 2_500..2_600, "failed").await;
    let id = flow.to_string();
    for args in [
        vec!["flows", "plot", &id],
        vec!["flows", "plot", &id, "--format", "svg"],
        vec!["flows", "show", &id],
    ] {
        let started = Instant::now();
        let r = sisy_on(&db, &args);
        let took = started.elapsed();
        eprintln!("sisy {args:?}: {took:?}");
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(took < Duration::from_secs(5), "sisy {args:?} took {took:?}");
        assert!(
            r.stdout
                .contains("2500 succeeded, 100 failed, 7400 pending")
                || r.stdout
                    .contains("2500/10000 succeeded, 100 failed, 7400 pending"),
            "{args:?}: {}",
            r.stdout
        );
    }
    let dot = ok(&db, &["flows", "plot", &id]);
    assert_eq!(dot.matches("[label=").count(), 2, "one node per job: {dot}");
    assert!(dot.contains("transform ×10000"), "{dot}");

    // Cancelled, the items that had not started are counted as not run.
    ok(&db, &["flows", "cancel", &id]);
    let human = ok(&db, &["flows", "show", &id]);
    assert!(
        human.contains("2500/10000 succeeded, 100 failed, 7400 not run"),
        "{human}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_and_show_give_an_item_runs_index_and_item() {
    let (db, client) = migrated_db().await;
    declare_flow(&db);
    let long = "x".repeat(5_000);
    let flow = run_list(&db, &client, &[json!("a.csv"), json!({ "path": long })]).await;
    let rows = json(&db, &["runs", "list", "--job", "transform"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let first = rows.iter().find(|r| r["item_index"] == 0).unwrap();
    assert_eq!(first["item"], "a.csv");
    let second = rows.iter().find(|r| r["item_index"] == 1).unwrap();
    assert_eq!(
        second["item"]["path"],
        long.as_str(),
        "--json keeps all of it"
    );

    let human = ok(&db, &["runs", "list", "--job", "transform"]);
    assert!(human.lines().next().unwrap().contains("ITEM"), "{human}");
    assert!(human.contains("0: \"a.csv\""), "{human}");
    assert!(human.contains("1: {\"path\":\"xxx"), "{human}");
    assert!(human.lines().all(|l| l.chars().count() < 400), "{human}");
    let plain = ok(&db, &["runs", "list", "--job", "list"]);
    assert!(!plain.contains("0: "), "{plain}");

    let id = second["id"].to_string();
    let shown = ok(&db, &["runs", "show", &id]);
    let item_line = shown.lines().find(|l| l.starts_with("item ")).unwrap();
    assert!(item_line.ends_with('…'), "{shown}");
    assert!(item_line.chars().count() < 600, "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("item_index") && l.ends_with(" 1")),
        "{shown}"
    );
    let full = json(&db, &["runs", "show", &id]);
    assert_eq!(full["item"]["path"], long.as_str());
    assert_eq!(full["flow_run_id"], flow);
}

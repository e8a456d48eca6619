//! The flows CLI with the real `sisy` binary against a real database: `jobs add/edit
//! --after` and the refusals the database makes (shown as is, nothing half-done), `flows
//! list/show/plot/cancel/rerun`, hostile job names in dot and SVG, and one flow run end to end
//! under a real guardian. Without a guardian, a flow run is moved on by setting its runs'
//! states in SQL: the database's triggers decide the members, as they do for a guardian.

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

use crate::cli::{fails, json, ok, sisy_on};
use crate::pg::TestDb;
use crate::util::{Guardian, migrated_db, wait_until};

/// Ends the open run of `job` in flow run `flow` with `state`, as a guardian would record
/// it (the state-change trigger then decides what follows).
async fn finish(client: &Client, flow: i64, job: &str, state: &str) {
    let n = client
        .execute(
            "UPDATE sisy.runs SET state = $3, host = 'h1', started_at = now(), finished_at = now()
              WHERE flow_run_id = $1 AND job_name = $2 AND state IN ('pending', 'running')",
            &[&flow, &job, &state],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "no open run of {job} in flow run {flow}");
}

async fn flow_state(client: &Client, flow: i64) -> String {
    client
        .query_one("SELECT state FROM sisy.flow_runs WHERE id = $1", &[&flow])
        .await
        .unwrap()
        .get(0)
}

/// The states of a flow run's members, by job, through `flows show --json`.
fn member_states(db: &TestDb, flow: i64) -> Vec<(String, String)> {
    let shown = json(db, &["flows", "show", &flow.to_string()]);
    let mut states: Vec<(String, String)> = shown["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["job"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    states.sort();
    states
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

/// Triggers `root` through the CLI; returns its flow run's id.
async fn start_flow(db: &TestDb, client: &Client, root: &str) -> i64 {
    let run: i64 = ok(db, &["jobs", "trigger", root]).trim().parse().unwrap();
    client
        .query_one("SELECT flow_run_id FROM sisy.runs WHERE id = $1", &[&run])
        .await
        .unwrap()
        .get::<_, Option<i64>>(0)
        .expect("triggering a root opens a flow run")
}

async fn upstreams(client: &Client, job: &str) -> Vec<String> {
    client
        .query(
            "SELECT upstream FROM sisy.dependencies WHERE job = $1 ORDER BY upstream",
            &[&job],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn job_count(client: &Client, name: &str) -> i64 {
    client
        .query_one("SELECT count(*) FROM sisy.jobs WHERE name = $1", &[&name])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_add_after_declares_a_flow_and_refused_edges_leave_nothing_behind() {
    let (db, client) = migrated_db().await;
    ok(
        &db,
        &[
            "jobs",
            "add",
            "extract",
            "--command",
            "true",
            "--flow-timeout",
            "2h",
        ],
    );
    ok(
        &db,
        &[
            "jobs",
            "add",
            "left",
            "--command",
            "true",
            "--after",
            "extract",
        ],
    );
    ok(
        &db,
        &[
            "jobs",
            "add",
            "right",
            "--command",
            "true",
            "--after",
            "extract",
        ],
    );
    let out = ok(
        &db,
        &[
            "jobs",
            "add",
            "report",
            "--command",
            "true",
            "--after",
            "left",
            "--after",
            "right",
            "--after",
            "left",
            "--trigger-rule",
            "none_failed",
            "--continue-on-failure",
        ],
    );
    assert!(out.contains("created job 'report'"), "{out}");
    assert_eq!(upstreams(&client, "report").await, ["left", "right"]);

    let report = json(&db, &["jobs", "show", "report"]);
    assert_eq!(report["trigger_rule"], "none_failed");
    assert_eq!(report["continue_on_failure"], true);
    assert_eq!(report["flow_timeout"], Value::Null);
    assert_eq!(
        report["upstreams"],
        serde_json::json!([{"job": "left", "condition": null}, {"job": "right", "condition": null}])
    );
    let extract = json(&db, &["jobs", "show", "extract"]);
    assert_eq!(extract["flow_timeout"], "02:00:00");
    assert_eq!(extract["trigger_rule"], "all_success");
    assert_eq!(extract["downstreams"].as_array().unwrap().len(), 2);
    client
        .execute(
            "UPDATE sisy.dependencies SET condition = '$.rows > 0' WHERE job = 'right'",
            &[],
        )
        .await
        .unwrap();
    let human = ok(&db, &["jobs", "show", "extract"]);
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("downstreams") && l.ends_with("left, right if ($.\"rows\" > 0)")),
        "{human}"
    );
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("upstreams") && l.ends_with(" -")),
        "{human}"
    );

    // Edit: the flags change what they name, `--continue-on-failure=false` turns it off, and
    // `--after` replaces the upstream set.
    ok(
        &db,
        &[
            "jobs",
            "edit",
            "report",
            "--continue-on-failure=false",
            "--trigger-rule",
            "all_done",
            "--after",
            "left",
        ],
    );
    let report = json(&db, &["jobs", "show", "report"]);
    assert_eq!(report["continue_on_failure"], false);
    assert_eq!(report["trigger_rule"], "all_done");
    assert_eq!(upstreams(&client, "report").await, ["left"]);
    ok(&db, &["jobs", "edit", "extract", "--flow-timeout", ""]);
    assert_eq!(
        json(&db, &["jobs", "show", "extract"])["flow_timeout"],
        Value::Null
    );

    // A cycle: the database's message, exit code 1, and none of the edit applied.
    let line = fails(
        &db,
        &[
            "jobs",
            "edit",
            "extract",
            "--after",
            "report",
            "--command",
            "changed",
        ],
        1,
        &[
            "cycle",
            "report -> extract -> left -> report",
            "nothing was changed",
        ],
    );
    assert!(!line.contains("panicked"), "{line}");
    assert!(upstreams(&client, "extract").await.is_empty());
    assert_eq!(json(&db, &["jobs", "show", "extract"])["command"], "true");

    // Refused adds create no job at all.
    fails(
        &db,
        &[
            "jobs",
            "add",
            "orphan",
            "--command",
            "true",
            "--after",
            "ghost",
        ],
        1,
        &["no job named 'ghost'", "nothing was created"],
    );
    assert_eq!(job_count(&client, "orphan").await, 0);
    fails(
        &db,
        &[
            "jobs",
            "add",
            "timed",
            "--command",
            "true",
            "--schedule",
            "0 * * * *",
            "--after",
            "extract",
        ],
        1,
        &["'timed' has a schedule"],
    );
    assert_eq!(job_count(&client, "timed").await, 0);
    fails(
        &db,
        &[
            "jobs",
            "add",
            "selfish",
            "--command",
            "true",
            "--after",
            "selfish",
        ],
        1,
        &["cannot run after itself"],
    );
    assert_eq!(job_count(&client, "selfish").await, 0);
    ok(&db, &["jobs", "add", "other", "--command", "true"]);
    ok(
        &db,
        &[
            "jobs",
            "add",
            "other_child",
            "--command",
            "true",
            "--after",
            "other",
        ],
    );
    fails(
        &db,
        &[
            "jobs",
            "add",
            "joiner",
            "--command",
            "true",
            "--after",
            "report",
            "--after",
            "other_child",
        ],
        1,
        &["two flows", "common root"],
    );
    assert_eq!(job_count(&client, "joiner").await, 0);
    fails(
        &db,
        &[
            "jobs",
            "add",
            "x",
            "--command",
            "true",
            "--trigger-rule",
            "sometimes",
        ],
        1,
        &["trigger_rule", "'sometimes'"],
    );
    fails(
        &db,
        &[
            "jobs",
            "add",
            "x",
            "--command",
            "true",
            "--flow-timeout=-1h",
        ],
        1,
        &["flow_timeout"],
    );
    fails(
        &db,
        &["jobs", "edit", "left", "--schedule", "0 * * * *"],
        1,
        &["schedule", "'left'"],
    );
    let r = sisy_on(
        &db,
        &[
            "jobs",
            "add",
            "x",
            "--command",
            "true",
            "--continue-on-failure=perhaps",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(job_count(&client, "x").await, 0);

    // `--after ''` removes every upstream; the same edit may then give the job a schedule.
    ok(
        &db,
        &[
            "jobs",
            "edit",
            "other_child",
            "--after",
            "",
            "--schedule",
            "0 * * * *",
        ],
    );
    assert!(upstreams(&client, "other_child").await.is_empty());
    // And the other way round: clearing the schedule lets it run after a job again.
    ok(
        &db,
        &[
            "jobs",
            "edit",
            "other_child",
            "--schedule",
            "",
            "--after",
            "other",
        ],
    );
    assert_eq!(upstreams(&client, "other_child").await, ["other"]);

    // An edge kept by a new --after list keeps its condition.
    ok(
        &db,
        &[
            "jobs", "edit", "right", "--after", "extract", "--after", "extract",
        ],
    );
    let kept = json(&db, &["jobs", "show", "right"]);
    assert_eq!(kept["upstreams"][0]["condition"], "($.\"rows\" > 0)");

    // A job others run after is not deleted; one that runs after others is, with its edges.
    fails(
        &db,
        &["jobs", "rm", "left"],
        1,
        &["'left' cannot be deleted", "'report'"],
    );
    ok(&db, &["jobs", "rm", "report"]);
    assert!(upstreams(&client, "report").await.is_empty());
    assert_eq!(
        json(&db, &["jobs", "show", "left"])["downstreams"],
        serde_json::json!([])
    );
}

/// A flow with hostile names: root -> `a"b` -> `<script>` (all_success), root -> `c\` ->
/// `<script>`, and a fallback `notify` (one_failed) after `a"b`.
async fn hostile_flow(db: &TestDb) {
    ok(db, &["jobs", "add", "root", "--command", "true"]);
    ok(
        db,
        &[
            "jobs",
            "add",
            "a\"b",
            "--command",
            "true",
            "--after",
            "root",
        ],
    );
    ok(
        db,
        &["jobs", "add", "c\\", "--command", "true", "--after", "root"],
    );
    ok(
        db,
        &[
            "jobs",
            "add",
            "<script>",
            "--command",
            "true",
            "--after",
            "a\"b",
            "--after",
            "c\\",
        ],
    );
    ok(
        db,
        &[
            "jobs",
            "add",
            "notify",
            "--command",
            "true",
            "--after",
            "a\"b",
            "--trigger-rule",
            "one_failed",
        ],
    );
}

/// The text content of every element of an SVG (parsed by a real XML parser).
fn svg_text(svg: &str) -> String {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML ({e}): {svg}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(!doc.descendants().any(|n| n.tag_name().name() == "script"));
    doc.descendants()
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("|")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_plot_draws_a_root_as_dot_and_svg_with_hostile_names() {
    let (db, client) = migrated_db().await;
    hostile_flow(&db).await;
    client
        .execute(
            "UPDATE sisy.dependencies SET condition = '$.rows > 0 && $.tag == \"x\"' WHERE job = '<script>' AND upstream = 'c\\'",
            &[],
        )
        .await
        .unwrap();
    let dot = ok(&db, &["flows", "plot", "root"]);
    assert!(dot.starts_with("digraph \"flow of root\" {"), "{dot}");
    assert!(dot.trim_end().ends_with('}'), "{dot}");
    for node in [
        "\"root\"",
        "\"a\\\"b\"",
        "\"c\\\\\"",
        "\"<script>\"",
        "\"notify\"",
    ] {
        assert!(
            dot.contains(&format!("\n  {node} [label=")),
            "{node} missing: {dot}"
        );
    }
    for edge in [
        "\"root\" -> \"a\\\"b\";",
        "\"root\" -> \"c\\\\\";",
        "\"a\\\"b\" -> \"<script>\";",
        "\"a\\\"b\" -> \"notify\";",
        "\"c\\\\\" -> \"<script>\" [label=\"($.\\\"rows\\\" > 0 && $.\\\"tag\\\" == \\\"x\\\")\"];",
    ] {
        assert!(dot.contains(edge), "{edge} missing: {dot}");
    }
    assert_eq!(dot.matches(" -> ").count(), 5, "{dot}");
    assert!(dot.contains("notify\\n(one_failed)"), "{dot}");
    assert_eq!(ok(&db, &["flows", "plot", "root", "--format", "dot"]), dot);

    let svg = ok(&db, &["flows", "plot", "root", "--format", "svg"]);
    let text = svg_text(&svg);
    for label in [
        "root",
        "a\"b",
        "c\\",
        "<script>",
        "notify",
        "(one_failed)",
        "($.\"rows\" > 0 && $.\"tag\" == \"x\")",
    ] {
        assert!(
            text.contains(label),
            "{label} missing from the SVG's text: {text}"
        );
    }

    let graph = json(&db, &["flows", "plot", "root"]);
    assert_eq!(graph["nodes"].as_array().unwrap().len(), 5);
    assert_eq!(graph["edges"].as_array().unwrap().len(), 5);

    fails(
        &db,
        &["flows", "plot", "ghost"],
        1,
        &["no job named 'ghost'"],
    );
    fails(
        &db,
        &["flows", "plot", "<script>"],
        1,
        &["not the root", "sisy flows plot 'root'"],
    );
    ok(&db, &["jobs", "add", "alone", "--command", "true"]);
    fails(
        &db,
        &["flows", "plot", "alone"],
        1,
        &["not in a flow", "--after 'alone'"],
    );
    fails(
        &db,
        &["flows", "plot", "4242"],
        1,
        &["no flow run with id 4242", "sisy flows list"],
    );
    let r = sisy_on(&db, &["flows", "plot", "root", "--format", "png"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_list_show_plot_rerun_and_cancel_a_flow_run() {
    let (db, client) = migrated_db().await;
    hostile_flow(&db).await;
    let flow = start_flow(&db, &client, "root").await;
    let id = flow.to_string();

    let listed = json(&db, &["flows", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], flow);
    assert_eq!(listed[0]["root_job"], "root");
    assert_eq!(listed[0]["state"], "running");
    assert_eq!(listed[0]["members"], 5);
    let table = ok(&db, &["flows", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("root") && table.contains("0/5 done, 1 pending"),
        "{table}"
    );
    let shown = ok(&db, &["flows", "show", &id]);
    assert!(
        shown.contains("root_job") && shown.contains("JOB"),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("<script>") && l.contains("waiting")),
        "{shown}"
    );

    // root succeeds, a"b fails, c\ succeeds: <script> (all_success) is upstream_failed, the
    // fallback runs.
    finish(&client, flow, "root", "succeeded").await;
    finish(&client, flow, "a\"b", "failed").await;
    finish(&client, flow, "c\\", "succeeded").await;
    finish(&client, flow, "notify", "succeeded").await;
    assert_eq!(flow_state(&client, flow).await, "failed");
    assert_eq!(
        member_states(&db, flow),
        pairs(&[
            ("root", "succeeded"),
            ("a\"b", "failed"),
            ("c\\", "succeeded"),
            ("<script>", "upstream_failed"),
            ("notify", "succeeded"),
        ])
    );
    let shown = json(&db, &["flows", "show", &id]);
    assert_eq!(shown["state"], "failed");
    let mut failed_members: Vec<&str> = shown["failed_members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    failed_members.sort();
    assert_eq!(failed_members, ["<script>", "a\"b"]);
    let failed = json(&db, &["runs", "list", "--state", "upstream_failed"]);
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["job_name"], "<script>");
    assert_eq!(failed[0]["reason"], "flow");
    assert_eq!(
        json(&db, &["flows", "list", "--state", "failed"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        json(&db, &["flows", "list", "--state", "running"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        json(&db, &["flows", "list", "--root", "notify"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    fails(
        &db,
        &["flows", "list", "--state", "done"],
        1,
        &["'done'", "timed_out"],
    );
    fails(&db, &["flows", "list", "--limit", "0"], 1, &["--limit"]);

    // The plot of the flow run: its states, coloured.
    let dot = ok(&db, &["flows", "plot", &id]);
    assert!(
        dot.starts_with(&format!("digraph \"flow run {flow} of root (failed)\" {{")),
        "{dot}"
    );
    assert!(
        dot.contains("\"<script>\" [label=\"<script>\\nupstream_failed\", fillcolor=\"#f4a6a6\"]"),
        "{dot}"
    );
    assert!(
        dot.contains("\"root\" [label=\"root\\nsucceeded\", fillcolor=\"#b7e4a7\"]"),
        "{dot}"
    );
    let text = svg_text(&ok(&db, &["flows", "plot", &id, "--format", "svg"]));
    for label in ["<script>", "upstream_failed", "a\"b", "failed", "succeeded"] {
        assert!(
            text.contains(label),
            "{label} missing from the SVG's text: {text}"
        );
    }

    // Rerun: the members that did not succeed (a"b and <script>) get a new attempt.
    fails(
        &db,
        &["flows", "rerun", &id, "--from", "ghost"],
        1,
        &["'ghost' is not a member"],
    );
    let out = ok(&db, &["flows", "rerun", &id]);
    assert!(out.contains("2 member(s) queued again"), "{out}");
    assert_eq!(flow_state(&client, flow).await, "running");
    fails(&db, &["flows", "rerun", &id], 1, &["still running"]);
    finish(&client, flow, "a\"b", "succeeded").await;
    finish(&client, flow, "<script>", "succeeded").await;
    assert_eq!(flow_state(&client, flow).await, "succeeded");
    let attempts: i32 = client
        .query_one(
            "SELECT max(attempt) FROM sisy.runs WHERE job_name = 'a\"b'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 2);
    let rerun = json(&db, &["flows", "rerun", &id]);
    assert_eq!(rerun["requeued"], 0);

    // Rerun from c\: it and <script> after it.
    let rerun = json(&db, &["flows", "rerun", &id, "--from", "c\\"]);
    assert_eq!(rerun["requeued"], 2);
    let states = member_states(&db, flow);
    assert!(
        states.contains(&("c\\".into(), "pending".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("<script>".into(), "waiting".into())),
        "{states:?}"
    );

    // Cancel it: the pending member is cancelled, nothing more is decided.
    let out = ok(&db, &["flows", "cancel", &id]);
    assert!(out.contains(&format!("cancelled flow run {flow}")), "{out}");
    assert_eq!(flow_state(&client, flow).await, "cancelled");
    let states = member_states(&db, flow);
    assert!(
        states.contains(&("c\\".into(), "cancelled".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("<script>".into(), "not_reached".into())),
        "{states:?}"
    );
    fails(
        &db,
        &["flows", "cancel", &id],
        1,
        &["already ended", "cancelled"],
    );
    fails(
        &db,
        &["flows", "cancel", "999999"],
        1,
        &["no flow run with id 999999"],
    );
    fails(
        &db,
        &["flows", "show", "999999"],
        1,
        &["no flow run with id 999999", "sisy flows list"],
    );
    fails(
        &db,
        &["flows", "rerun", "999999"],
        1,
        &["no flow run with id 999999"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_runs_end_to_end_under_a_guardian_and_cancel_kills_its_running_member() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    ok(&db, &["jobs", "add", "start", "--command", "echo start"]);
    ok(
        &db,
        &[
            "jobs",
            "add",
            "works",
            "--command",
            "echo works",
            "--after",
            "start",
        ],
    );
    ok(
        &db,
        &[
            "jobs",
            "add",
            "breaks",
            "--command",
            "exit 3",
            "--after",
            "start",
            "--continue-on-failure",
        ],
    );
    ok(
        &db,
        &[
            "jobs",
            "add",
            "join",
            "--command",
            "echo joined",
            "--after",
            "works",
            "--after",
            "breaks",
        ],
    );
    let flow = start_flow(&db, &client, "start").await;
    wait_until(
        &client,
        "the flow run to end",
        Duration::from_secs(60),
        || format!("SELECT state FROM sisy.flow_runs WHERE id = {flow}"),
        |s: String| s != "running",
    )
    .await;
    assert_eq!(flow_state(&client, flow).await, "succeeded");
    assert_eq!(
        member_states(&db, flow),
        pairs(&[
            ("start", "succeeded"),
            ("works", "succeeded"),
            ("breaks", "failed"),
            ("join", "succeeded"),
        ])
    );
    let shown = json(&db, &["flows", "show", &flow.to_string()]);
    let join = shown["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["job"] == "join")
        .unwrap();
    assert_eq!(join["hosts"], serde_json::json!(["g1"]));
    assert_eq!(join["attempt"], 1);
    let human = ok(&db, &["flows", "show", &flow.to_string()]);
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("join") && l.contains("g1")),
        "{human}"
    );

    // A flow run whose member runs for long: cancel kills it.
    ok(&db, &["jobs", "add", "begin", "--command", "true"]);
    ok(
        &db,
        &[
            "jobs",
            "add",
            "long",
            "--command",
            "sleep 300",
            "--after",
            "begin",
        ],
    );
    let flow = start_flow(&db, &client, "begin").await;
    wait_until(
        &client,
        "the long member to run",
        Duration::from_secs(60),
        || format!("SELECT count(*) FROM sisy.runs WHERE flow_run_id = {flow} AND job_name = 'long' AND pid IS NOT NULL"),
        |n: i64| n == 1,
    )
    .await;
    ok(&db, &["flows", "cancel", &flow.to_string()]);
    wait_until(
        &client,
        "the long member to be killed",
        Duration::from_secs(30),
        || format!("SELECT state FROM sisy.runs WHERE flow_run_id = {flow} AND job_name = 'long'"),
        |s: String| s == "killed",
    )
    .await;
    assert_eq!(flow_state(&client, flow).await, "cancelled");
    let states = member_states(&db, flow);
    assert!(
        states.contains(&("long".into(), "killed".into())),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_commands_work_for_the_roles_that_may_use_them() {
    let (db, owner) = migrated_db().await;
    ok(&db, &["db", "roles"]);
    let (reader_url, _reader) = crate::security::login_as(&db, &owner, "sisy_reader").await;
    let (admin_url, _admin) = crate::security::login_as(&db, &owner, "sisy_admin").await;
    let as_role = |url: &str| TestDb {
        name: db.name.clone(),
        url: url.to_string(),
    };
    let (reader, admin) = (as_role(&reader_url), as_role(&admin_url));

    // An admin declares and edits the flow, and controls its runs.
    ok(&admin, &["jobs", "add", "first", "--command", "true"]);
    ok(
        &admin,
        &[
            "jobs",
            "add",
            "second",
            "--command",
            "true",
            "--after",
            "first",
        ],
    );
    ok(
        &admin,
        &[
            "jobs",
            "add",
            "third",
            "--command",
            "true",
            "--after",
            "first",
        ],
    );
    ok(
        &admin,
        &[
            "jobs",
            "edit",
            "third",
            "--after",
            "second",
            "--trigger-rule",
            "all_done",
        ],
    );
    assert_eq!(upstreams(&owner, "third").await, ["second"]);
    let flow = start_flow(&admin, &owner, "first").await;
    let id = flow.to_string();

    // A reader watches it and draws it, and may not control it.
    for args in [
        &["flows", "list"][..],
        &["flows", "show", &id],
        &["flows", "plot", &id],
        &["flows", "plot", "first", "--format", "svg"],
        &["jobs", "show", "second"],
    ] {
        ok(&reader, args);
    }
    assert_eq!(
        json(&reader, &["jobs", "show", "second"])["downstreams"][0]["job"],
        "third"
    );
    fails(
        &reader,
        &["flows", "cancel", &id],
        1,
        &["permission denied"],
    );
    fails(
        &reader,
        &[
            "jobs",
            "add",
            "fourth",
            "--command",
            "true",
            "--after",
            "third",
        ],
        1,
        &["permission denied"],
    );

    ok(&admin, &["flows", "cancel", &id]);
    assert_eq!(flow_state(&owner, flow).await, "cancelled");
    fails(&reader, &["flows", "rerun", &id], 1, &["permission denied"]);
    let rerun = json(&admin, &["flows", "rerun", &id]);
    assert_eq!(rerun["requeued"], 3);
    assert_eq!(flow_state(&owner, flow).await, "running");
}

/// `sisy flows plot … | head` (or any listing) closes the pipe early: the output is cut,
/// quietly, like any other tool's, not a panic (`println!` panicked: exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_into_a_closed_pipe_is_no_panic() {
    let (db, _client) = migrated_db().await;
    ok(&db, &["jobs", "add", "up", "--command", "true"]);
    ok(
        &db,
        &["jobs", "add", "down", "--command", "true", "--after", "up"],
    );
    let commands: [&[&str]; 8] = [
        &["flows", "plot", "up", "--format", "dot"],
        &["flows", "plot", "up", "--format", "svg"],
        &["flows", "list"],
        &["jobs", "list"],
        &["jobs", "show", "up"],
        &["runs", "list"],
        &["status"],
        &["hosts", "list"],
    ];
    for args in commands {
        let format = args.join(" ");
        let mut child = crate::util::sisy()
            .args(["--database-url", &db.url])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reading end closes before sisy has even connected to the database.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{format}: {stderr}");
    }
}

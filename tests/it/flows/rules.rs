//! The SPEC §7 table, cell by cell: every trigger rule against every pair of upstream
//! outcomes (success, failure, skipped, a `continue_on_failure` failure, a condition true,
//! false, or over a NULL result), decided by the database with run states driven by SQL;
//! and the same rules once with real guardians and real processes.

use std::time::Duration;

use super::{drive, exec, flow_state, member, open};
use crate::util::{Guardian, migrated_db, wait_until};

const RULES: [&str; 5] = [
    "all_success",
    "all_done",
    "one_success",
    "one_failed",
    "none_failed",
];

/// How an upstream ends, and what its downstream reads.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Up {
    Success,
    Failure,
    /// Cancelled before it started (`sisy.kill` of its pending run).
    Skipped,
    /// Fails, with `continue_on_failure`: a success for its downstream.
    KeepGoing,
    /// Succeeds; its edges' condition is true of its result.
    CondTrue,
    /// Succeeds; its edges' condition is false of its result.
    CondFalse,
    /// Succeeds without a result; its edges have a condition.
    CondNull,
}

const UPS: [Up; 7] = [
    Up::Success,
    Up::Failure,
    Up::Skipped,
    Up::KeepGoing,
    Up::CondTrue,
    Up::CondFalse,
    Up::CondNull,
];

#[derive(Clone, Copy, PartialEq)]
enum Read {
    Success,
    Failure,
    Skipped,
}

impl Up {
    /// The outcome its downstream reads, by the SPEC's outcome list.
    fn read(self) -> Read {
        match self {
            Up::Success | Up::KeepGoing | Up::CondTrue => Read::Success,
            Up::Failure => Read::Failure,
            Up::Skipped | Up::CondFalse | Up::CondNull => Read::Skipped,
        }
    }
}

/// The SPEC's table: "run", or the state the member is recorded as.
fn expected(rule: &str, ups: &[Up]) -> &'static str {
    let ok = ups.iter().filter(|u| u.read() == Read::Success).count();
    let failed = ups.iter().filter(|u| u.read() == Read::Failure).count();
    let all = ups.len();
    match rule {
        "all_success" if ok == all => "run",
        "all_success" if failed > 0 => "upstream_failed",
        "all_success" => "skipped",
        "all_done" => "run",
        "one_success" if ok > 0 => "run",
        "one_success" if failed > 0 => "upstream_failed",
        "one_success" => "skipped",
        "one_failed" if failed > 0 => "run",
        "one_failed" => "skipped",
        "none_failed" if failed == 0 => "run",
        "none_failed" => "upstream_failed",
        _ => unreachable!(),
    }
}

/// The jobs of one cell row: root `r{i}`, upstreams `u{i}a`, `u{i}b`, and one member per rule.
fn graph(i: usize, ups: [Up; 2]) -> String {
    let mut sql = format!("INSERT INTO sisy.jobs (name, command) VALUES ('r{i}', 'true');\n");
    for (up, name) in ups.iter().zip(["a", "b"]) {
        let keep = *up == Up::KeepGoing;
        sql += &format!(
            "INSERT INTO sisy.jobs (name, command, continue_on_failure) VALUES ('u{i}{name}', 'true', {keep});
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('u{i}{name}', 'r{i}');\n"
        );
    }
    for rule in RULES {
        sql += &format!(
            "INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('m{i}_{rule}', 'true', '{rule}');\n"
        );
        for (up, name) in ups.iter().zip(["a", "b"]) {
            let condition = match up {
                Up::CondTrue | Up::CondFalse | Up::CondNull => "'$.go == true'",
                _ => "NULL",
            };
            sql += &format!(
                "INSERT INTO sisy.dependencies VALUES ('m{i}_{rule}', 'u{i}{name}', {condition});\n"
            );
        }
    }
    sql
}

/// Ends upstream `job` of flow run `fr` as `up` says.
async fn end(client: &tokio_postgres::Client, fr: i64, job: &str, up: Up) {
    match up {
        Up::Success => drive(client, fr, job, "succeeded", Some("{\"n\": 1}")).await,
        Up::Failure | Up::KeepGoing => drive(client, fr, job, "failed", None).await,
        Up::Skipped => {
            client
                .execute(
                    "SELECT sisy.kill(id) FROM sisy.runs
                      WHERE flow_run_id = $1 AND job_name = $2 AND state = 'pending'",
                    &[&fr, &job],
                )
                .await
                .unwrap();
        }
        Up::CondTrue => drive(client, fr, job, "succeeded", Some("{\"go\": true}")).await,
        Up::CondFalse => drive(client, fr, job, "succeeded", Some("{\"go\": false}")).await,
        Up::CondNull => drive(client, fr, job, "succeeded", None).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trigger_rule_against_every_pair_of_upstream_outcomes_follows_the_table() {
    let (_db, client) = migrated_db().await;
    let mut pairs = Vec::new();
    for a in UPS {
        for b in UPS {
            pairs.push([a, b]);
        }
    }
    let mut sql = String::new();
    for (i, ups) in pairs.iter().enumerate() {
        sql += &graph(i, *ups);
    }
    exec(&client, &sql).await;

    let mut wrong = Vec::new();
    for (i, ups) in pairs.iter().enumerate() {
        let fr = open(&client, &format!("r{i}")).await;
        drive(&client, fr, &format!("r{i}"), "succeeded", None).await;
        end(&client, fr, &format!("u{i}a"), ups[0]).await;
        end(&client, fr, &format!("u{i}b"), ups[1]).await;
        for rule in RULES {
            let job = format!("m{i}_{rule}");
            let want = expected(rule, ups);
            let (state, error) = member(&client, fr, &job).await;
            let got = if state == "pending" {
                "run"
            } else {
                state.as_str()
            };
            if got != want {
                wrong.push(format!(
                    "{rule} after {ups:?}: {got} ({error}), want {want}"
                ));
                continue;
            }
            // The error says why, naming the failed upstream(s) for upstream_failed.
            if want == "upstream_failed" {
                for (up, name) in ups.iter().zip(["a", "b"]) {
                    let named = error.contains(&format!("'u{i}{name}'"));
                    if named != (up.read() == Read::Failure) {
                        wrong.push(format!("{rule} after {ups:?}: error {error:?}"));
                    }
                }
            } else if want == "skipped" && error.is_empty() {
                wrong.push(format!("{rule} after {ups:?}: skipped without a reason"));
            }
            if want == "run" {
                drive(&client, fr, &job, "succeeded", None).await;
            }
        }
        // Ended: failed if an upstream failed (a continue_on_failure one does not count,
        // a fallback that ran does not clear it), else succeeded.
        let failed = ups.contains(&Up::Failure);
        let state = flow_state(&client, fr).await;
        let want = if failed { "failed" } else { "succeeded" };
        if state != want {
            wrong.push(format!("flow run after {ups:?}: {state}, want {want}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong cells:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// With one upstream, every rule against every single outcome (the table's single-upstream
/// column, which two upstreams can hide: one_success with a lone skipped upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trigger_rule_against_a_single_upstream_follows_the_table() {
    let (_db, client) = migrated_db().await;
    let mut sql = String::new();
    for (i, up) in UPS.iter().enumerate() {
        let keep = *up == Up::KeepGoing;
        let condition = match up {
            Up::CondTrue | Up::CondFalse | Up::CondNull => "'$.go == true'",
            _ => "NULL",
        };
        sql += &format!(
            "INSERT INTO sisy.jobs (name, command) VALUES ('r{i}', 'true');
             INSERT INTO sisy.jobs (name, command, continue_on_failure) VALUES ('u{i}a', 'true', {keep});
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('u{i}a', 'r{i}');\n"
        );
        for rule in RULES {
            sql += &format!(
                "INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('m{i}_{rule}', 'true', '{rule}');
                 INSERT INTO sisy.dependencies VALUES ('m{i}_{rule}', 'u{i}a', {condition});\n"
            );
        }
    }
    exec(&client, &sql).await;
    let mut wrong = Vec::new();
    for (i, up) in UPS.iter().enumerate() {
        let fr = open(&client, &format!("r{i}")).await;
        drive(&client, fr, &format!("r{i}"), "succeeded", None).await;
        end(&client, fr, &format!("u{i}a"), *up).await;
        for rule in RULES {
            let want = expected(rule, &[*up]);
            let (state, error) = member(&client, fr, &format!("m{i}_{rule}")).await;
            let got = if state == "pending" {
                "run"
            } else {
                state.as_str()
            };
            if got != want {
                wrong.push(format!("{rule} after {up:?}: {got} ({error}), want {want}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong cells:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The rules with real processes: an upstream that really exits 1, one that succeeds, and a
/// member per rule after both; a `one_failed` notifier runs, an `all_success` report is
/// `upstream_failed` naming the failed upstream, the flow run fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_with_real_guardians_and_a_real_failure() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "capacity = 8");
    let mut sql = "INSERT INTO sisy.jobs (name, command) VALUES
                       ('import', 'true'), ('good', 'true'), ('bad', 'exit 3');
                   INSERT INTO sisy.dependencies (job, upstream) VALUES ('good', 'import'), ('bad', 'import');\n"
        .to_string();
    for rule in RULES {
        sql += &format!(
            "INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('{rule}', 'true', '{rule}');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('{rule}', 'good'), ('{rule}', 'bad');\n"
        );
    }
    exec(&client, &sql).await;
    let fr = open(&client, "import").await;
    let state = wait_until(
        &client,
        "the flow run to end",
        Duration::from_secs(60),
        || format!("SELECT state FROM sisy.flow_runs WHERE id = {fr}"),
        |s: String| s != "running",
    )
    .await;
    assert_eq!(state, "failed");
    let ups = [Up::Success, Up::Failure];
    for rule in RULES {
        let (state, error) = member(&client, fr, rule).await;
        let want = match expected(rule, &ups) {
            "run" => "succeeded",
            other => other,
        };
        assert_eq!(state, want, "{rule}: {error}");
        if want == "upstream_failed" {
            assert!(
                error.contains("'bad'") && !error.contains("'good'"),
                "{error}"
            );
        }
    }
}

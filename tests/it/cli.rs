//! The real `sisy` binary against a real database, for each subcommand and its error paths:
//! exit codes, one-line errors that say what to do, human and `--json` output.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::pg::TestDb;
use crate::util::{Guardian, fleet, migrated_db, sisy, wait_finished};

pub(crate) struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) fn sisy_on(db: &TestDb, args: &[&str]) -> Ran {
    let out: Output = sisy()
        .args(["--database-url", &db.url])
        .args(args)
        .output()
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn ok(db: &TestDb, args: &[&str]) -> String {
    let r = sisy_on(db, args);
    assert_eq!(r.code, 0, "sisy {args:?} failed: {}", r.stderr);
    r.stdout
}

pub(crate) fn json(db: &TestDb, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(db, &all)).unwrap()
}

/// Fails with exit code `code` and one line on stderr containing every word of `words`.
pub(crate) fn fails(db: &TestDb, args: &[&str], code: i32, words: &[&str]) -> String {
    let r = sisy_on(db, args);
    assert_eq!(
        r.code, code,
        "sisy {args:?}: stdout {} stderr {}",
        r.stdout, r.stderr
    );
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "error is not one line: {line}");
    assert!(line.starts_with("error: "), "{line}");
    for w in words {
        assert!(line.contains(w), "error {line:?} lacks {w:?}");
    }
    line.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_commands_manage_jobs_and_refuse_bad_input() {
    let (db, client) = migrated_db().await;
    let out = ok(
        &db,
        &[
            "jobs",
            "add",
            "backup",
            "--command",
            "echo hi",
            "--schedule",
            "30 2 * * *",
            "--tz",
            "Europe/Amsterdam",
            "--retries",
            "2",
            "--ttl",
            "10m",
            "--env",
            "A=1",
            "--env",
            "B=two words",
        ],
    );
    assert!(out.contains("created job 'backup'"), "{out}");
    let job = json(&db, &["jobs", "show", "backup", "--show-env-values"]);
    assert_eq!(job["schedule"], "30 2 * * *");
    assert_eq!(job["timezone"], "Europe/Amsterdam");
    assert_eq!(job["max_retries"], 2);
    assert_eq!(job["ttl"], "00:10:00");
    assert_eq!(job["env"], serde_json::json!({"A": "1", "B": "two words"}));

    ok(
        &db,
        &[
            "jobs",
            "edit",
            "backup",
            "--schedule",
            "0 3 * * *",
            "--unset-env",
            "A",
            "--max-runtime",
            "1h",
        ],
    );
    let job = json(&db, &["jobs", "show", "backup", "--show-env-values"]);
    assert_eq!(job["schedule"], "0 3 * * *");
    assert_eq!(job["env"], serde_json::json!({"B": "two words"}));
    assert_eq!(job["max_runtime"], "01:00:00");
    ok(&db, &["jobs", "edit", "backup", "--max-runtime", ""]);
    assert_eq!(
        json(&db, &["jobs", "show", "backup"])["max_runtime"],
        Value::Null
    );

    ok(&db, &["jobs", "suspend", "backup"]);
    let suspended: bool = client
        .query_one("SELECT suspended FROM sisy.jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert!(suspended);
    ok(&db, &["jobs", "resume", "backup"]);
    let list = ok(&db, &["jobs", "list"]);
    assert!(
        list.starts_with("NAME") && list.contains("backup"),
        "{list}"
    );
    let listed = json(&db, &["jobs", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // Names with quotes, semicolons and non-ASCII go through untouched.
    let odd = "bäckup; 'DROP' \"x\"";
    ok(
        &db,
        &["jobs", "add", odd, "--command", "echo 'it''s'; echo ok"],
    );
    assert_eq!(json(&db, &["jobs", "show", odd])["name"], odd);
    let id: Value = json(&db, &["jobs", "trigger", odd]);
    assert!(id["run_id"].as_i64().unwrap() > 0);

    fails(
        &db,
        &["jobs", "show", "nope"],
        1,
        &["'nope'", "sisy jobs list"],
    );
    fails(&db, &["jobs", "trigger", "nope"], 1, &["'nope'"]);
    fails(&db, &["jobs", "suspend", "nope"], 1, &["'nope'"]);
    fails(&db, &["jobs", "rm", "nope"], 1, &["'nope'"]);
    fails(
        &db,
        &["jobs", "edit", "nope", "--command", "x"],
        1,
        &["'nope'"],
    );
    fails(
        &db,
        &[
            "jobs",
            "add",
            "x",
            "--command",
            "true",
            "--schedule",
            "61 * * * *",
        ],
        1,
        &["minute", "61"],
    );
    fails(
        &db,
        &["jobs", "add", "x", "--command", "true", "--target", "some"],
        1,
        &["target", "'some'"],
    );
    fails(
        &db,
        &["jobs", "add", "x", "--command", "true", "--ttl=-5m"],
        1,
        &["ttl"],
    );
    fails(
        &db,
        &["jobs", "add", "x", "--command", "true", "--tz", "Mars/Base"],
        1,
        &["Mars/Base"],
    );
    fails(&db, &["jobs", "add", "x"], 1, &["--command"]);
    fails(
        &db,
        &["jobs", "add", "backup", "--command", "true"],
        1,
        &["backup"],
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM sisy.jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2, "a refused add created something");

    ok(&db, &["jobs", "rm", "backup"]);
    fails(&db, &["jobs", "show", "backup"], 1, &["'backup'"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_commands_show_logs_kill_and_retry() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    ok(
        &db,
        &[
            "jobs",
            "add",
            "hello",
            "--command",
            "printf 'line one\\nline two\\n'; exit 3",
        ],
    );
    ok(&db, &["jobs", "add", "sleeper", "--command", "sleep 300"]);
    let id: i64 = ok(&db, &["jobs", "trigger", "hello"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        wait_finished(&client, id, Duration::from_secs(30)).await,
        "failed"
    );
    assert_eq!(
        ok(&db, &["runs", "logs", &id.to_string()]),
        "line one\nline two\n"
    );
    let run = json(&db, &["runs", "show", &id.to_string()]);
    assert_eq!(run["exit_code"], 3);
    assert_eq!(run["state"], "failed");
    let listed = json(
        &db,
        &[
            "runs", "list", "--job", "hello", "--state", "failed", "--since", "1h",
        ],
    );
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let table = ok(&db, &["runs", "list"]);
    assert!(
        table.starts_with("ID") && table.contains("hello"),
        "{table}"
    );

    let retry: i64 = ok(&db, &["runs", "retry", &id.to_string()])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        wait_finished(&client, retry, Duration::from_secs(30)).await,
        "failed"
    );
    let attempt: i32 = client
        .query_one("SELECT attempt FROM sisy.runs WHERE id = $1", &[&retry])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempt, 2);

    let long: i64 = ok(&db, &["jobs", "trigger", "sleeper"])
        .trim()
        .parse()
        .unwrap();
    crate::util::wait_started(&client, long).await;
    ok(&db, &["runs", "kill", &long.to_string()]);
    assert_eq!(
        wait_finished(&client, long, Duration::from_secs(30)).await,
        "killed"
    );

    fails(
        &db,
        &["runs", "kill", &id.to_string()],
        1,
        &["already finished"],
    );
    fails(
        &db,
        &["runs", "show", "999999"],
        1,
        &["999999", "sisy runs list"],
    );
    fails(&db, &["runs", "logs", "999999"], 1, &["999999"]);
    fails(&db, &["runs", "kill", "999999"], 1, &["999999"]);
    fails(&db, &["runs", "retry", "999999"], 1, &["999999"]);
    fails(
        &db,
        &["runs", "list", "--state", "done"],
        1,
        &["'done'", "succeeded"],
    );
    fails(
        &db,
        &["runs", "list", "--since", "yesterday-ish"],
        1,
        &["--since"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_status_give_the_fleet_overview() {
    let (db, client) = migrated_db().await;
    let _fleet = fleet(&db, &client, 2, "").await;
    let hosts = json(&db, &["hosts", "list"]);
    assert_eq!(hosts.as_array().unwrap().len(), 2);
    assert_eq!(hosts[0]["alive"], true);
    ok(&db, &["hosts", "drain", "g1"]);
    assert_eq!(json(&db, &["hosts", "list"])[0]["draining"], true);
    ok(&db, &["hosts", "undrain", "g1"]);
    fails(
        &db,
        &["hosts", "drain", "nowhere"],
        1,
        &["'nowhere'", "sisy hosts list"],
    );

    ok(&db, &["jobs", "add", "broken", "--command", "exit 1"]);
    let id: i64 = ok(&db, &["jobs", "trigger", "broken"])
        .trim()
        .parse()
        .unwrap();
    wait_finished(&client, id, Duration::from_secs(30)).await;
    client
        .execute("INSERT INTO sisy.jobs (name, command, schedule) VALUES ('typo', 'true', '* * * * * * *')", &[])
        .await
        .unwrap();
    crate::util::wait_until(
        &client,
        "the typo flagged",
        Duration::from_secs(30),
        || "SELECT count(*) FROM sisy.jobs WHERE schedule_error IS NOT NULL".into(),
        |n: i64| n == 1,
    )
    .await;
    let status = ok(&db, &["status"]);
    assert!(status.contains("hosts    2 alive"), "{status}");
    assert!(
        status.contains("failing jobs:") && status.contains("broken"),
        "{status}"
    );
    assert!(
        status.contains("unusable schedules:") && status.contains("typo"),
        "{status}"
    );
    let s = json(&db, &["status"]);
    assert_eq!(s["hosts_alive"], 2);
    assert_eq!(s["failing_jobs"][0]["name"], "broken");
}

#[test]
fn schedule_check_prints_local_and_utc_or_names_the_bad_field() {
    let out = sisy()
        .args([
            "schedule",
            "check",
            "30 2 * * *",
            "--tz",
            "Europe/Amsterdam",
            "--after",
            "2026-03-28T12:00:00Z",
            "--count",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    // The spring-forward day: 02:30 does not exist and runs at 03:00 CEST (01:00 UTC).
    assert_eq!(
        text,
        "2026-03-29 03:00:00 CEST (+02:00)  2026-03-29 01:00:00 UTC\n2026-03-30 02:30:00 CEST (+02:00)  2026-03-30 00:30:00 UTC\n"
    );
    let out = sisy()
        .args(["schedule", "check", "0 25 * * *"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hour") && err.contains("25"), "{err}");
}

#[test]
fn an_unreachable_database_is_exit_code_3() {
    let out = sisy()
        .args([
            "--database-url",
            "host=/nonexistent-sisy port=1 user=nobody dbname=none",
            "jobs",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect") && err.contains("PostgreSQL is running"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_monitoring_queries_run() {
    let (_db, client) = migrated_db().await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("Example monitoring queries")
        .nth(1)
        .expect("the README has monitoring queries");
    let block = section
        .split("```sql")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let statements: Vec<&str> = block
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert!(statements.len() >= 5, "{statements:?}");
    for sql in statements {
        client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("README query failed: {sql}: {e}"));
    }
}

/// `sisy jobs show` as each role, through the real binary: a reader sees the job and the
/// names of its env variables; nobody sees their values unless asking with
/// `--show-env-values`, which a reader is refused with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_show_hides_env_values_and_works_for_every_role() {
    let (db, owner) = migrated_db().await;
    ok(&db, &["db", "roles"]);
    owner
        .execute(
            "INSERT INTO sisy.jobs (name, command, env) VALUES ('secretive', 'echo ok', '{\"TOKEN\": \"s3cret\", \"MODE\": \"fast\"}')",
            &[],
        )
        .await
        .unwrap();
    let (reader_url, _reader) = crate::security::login_as(&db, &owner, "sisy_reader").await;
    let (admin_url, _admin) = crate::security::login_as(&db, &owner, "sisy_admin").await;
    let as_role = |url: &str| TestDb {
        name: db.name.clone(),
        url: url.to_string(),
    };
    for role in [as_role(&reader_url), as_role(&admin_url)] {
        // The other reading commands work for both roles too.
        for args in [
            &["jobs", "list"][..],
            &["status"],
            &["runs", "list"],
            &["hosts", "list"],
        ] {
            ok(&role, args);
        }
        let text = ok(&role, &["jobs", "show", "secretive"]);
        assert!(
            text.contains("echo ok") && text.contains("MODE, TOKEN") && !text.contains("s3cret"),
            "{text}"
        );
        let v = json(&role, &["jobs", "show", "secretive"]);
        assert_eq!(v["command"], "echo ok", "{v}");
        assert_eq!(v["env_keys"], serde_json::json!(["MODE", "TOKEN"]), "{v}");
        assert!(
            v.get("env").is_none() && !v.to_string().contains("s3cret"),
            "{v}"
        );
    }
    fails(
        &as_role(&reader_url),
        &["jobs", "show", "secretive", "--show-env-values"],
        1,
        &["cannot read", "env", "without --show-env-values"],
    );
    let text = ok(
        &as_role(&admin_url),
        &["jobs", "show", "secretive", "--show-env-values"],
    );
    assert!(text.contains("s3cret"), "{text}");
    let v = json(
        &as_role(&admin_url),
        &["jobs", "show", "secretive", "--show-env-values"],
    );
    assert_eq!(v["env"]["TOKEN"], "s3cret", "{v}");
    fails(
        &as_role(&reader_url),
        &["jobs", "show", "nothing"],
        1,
        &["no job named 'nothing'"],
    );
}

/// `sisy jobs add` restates no default: a column the command line leaves out takes the
/// table's own default (here changed by the operator), one it gives is taken as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_add_lets_the_table_defaults_apply() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute(
            "ALTER TABLE sisy.jobs ALTER COLUMN kill_grace SET DEFAULT '42 seconds', \
             ALTER COLUMN overlap SET DEFAULT 'allow', ALTER COLUMN pool SET DEFAULT 'night'",
        )
        .await
        .unwrap();
    ok(&db, &["jobs", "add", "plain", "--command", "true"]);
    ok(
        &db,
        &[
            "jobs",
            "add",
            "given",
            "--command",
            "true",
            "--overlap",
            "replace",
            "--kill-grace",
            "5s",
            "--pool",
            "day",
        ],
    );
    for (name, grace, overlap, pool) in [
        ("plain", 42.0, "allow", "night"),
        ("given", 5.0, "replace", "day"),
    ] {
        let row = client
            .query_one(
                "SELECT extract(epoch FROM kill_grace)::float8, overlap, pool FROM sisy.jobs WHERE name = $1",
                &[&name],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, f64>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2)
            ),
            (grace, overlap.to_string(), pool.to_string()),
            "{name}"
        );
    }
}

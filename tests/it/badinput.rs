//! Bad input from a job row or a job itself: each case ends in a clear recorded error (or a
//! refusal at INSERT naming the column), and the guardian carries on undisturbed.

use std::time::Duration;

use crate::util::{Guardian, migrated_db, shared_dir, trigger, wait_finished, wait_until};

const LONG: Duration = Duration::from_secs(60);

async fn run_job(
    client: &tokio_postgres::Client,
    name: &str,
    columns: &str,
    values: &str,
) -> (String, Option<String>) {
    client
        .execute(
            &format!("INSERT INTO sisy.jobs (name, {columns}) VALUES ($1, {values})"),
            &[&name],
        )
        .await
        .unwrap();
    let id = trigger(client, name).await;
    let state = wait_finished(client, id, LONG).await;
    let error: Option<String> = client
        .query_one("SELECT error FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    (state, error)
}

/// The guardian still runs jobs after all of the above.
async fn still_healthy(client: &tokio_postgres::Client) {
    let (state, _) = run_job(client, "canary", "command", "'echo alive'").await;
    assert_eq!(state, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_fail_with_clear_errors_and_the_guardian_carries_on() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");

    let huge = format!("': {}'", "x".repeat(1 << 20));
    let (state, error) = run_job(&client, "huge", "command", &huge).await;
    assert_eq!(state, "failed");
    assert!(error.unwrap().contains("put it in a script"));

    let (state, _) = run_job(&client, "missing", "command", "'no-such-command-anywhere'").await;
    assert_eq!(state, "failed");
    let out: String = client
        .query_one(
            "SELECT output FROM sisy.runs WHERE job_name = 'missing'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(out.contains("not found"), "{out}");

    let (state, error) = run_job(
        &client,
        "nowhere",
        "command, workdir",
        "'pwd', '/no/such/dir'",
    )
    .await;
    assert_eq!(state, "failed");
    assert!(
        error
            .unwrap()
            .contains("workdir '/no/such/dir' does not exist on host g1")
    );

    let (state, error) = run_job(&client, "ghost", "command, run_as", "'id', 'ghost-user'").await;
    assert_eq!(state, "failed");
    let error = error.unwrap();
    assert!(
        error.contains("'ghost-user'") && error.contains("g1"),
        "{error}"
    );

    still_healthy(&client).await;
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_printing_gigabytes_keeps_the_guardian_small() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    let (state, _) = run_job(
        &client,
        "flood",
        "command",
        "'head -c 2000000000 /dev/zero; echo end'",
    )
    .await;
    assert_eq!(state, "succeeded");
    let (bytes, kept): (i64, i32) = {
        let row = client
            .query_one(
                "SELECT output_bytes, length(output) FROM sisy.runs WHERE job_name = 'flood'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(bytes, 2_000_000_004);
    assert!(kept as usize <= 64 * 1024, "kept {kept}");
    let peak_kib = peak_rss_kib(g.pid().expect("the guardian runs"));
    assert!(peak_kib < 64 * 1024, "guardian peak RSS {peak_kib} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_forking_a_thousand_children_leaves_none_behind() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    let dir = shared_dir();
    let marker = dir.path().join("pgid");
    // Field 5 of /proc/PID/stat is the process group.
    let command = format!(
        "for i in $(seq 1000); do sleep 300 & done; cut -d' ' -f5 /proc/$$/stat > {}; exit 0",
        marker.display()
    );
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, kill_grace) VALUES ('forky', $1, '2 seconds')",
            &[&command],
        )
        .await
        .unwrap();
    let id = trigger(&client, "forky").await;
    assert_eq!(wait_finished(&client, id, LONG).await, "succeeded");
    let pgid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let left = live_members_of_group(pgid);
    assert_eq!(left, 0, "{left} processes of the job's group survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_and_negative_intervals_are_refused_naming_the_column() {
    let (_db, client) = migrated_db().await;
    for (sql, column) in [
        (
            "INSERT INTO sisy.jobs (name, command) VALUES ('a', NULL)",
            "command",
        ),
        (
            "INSERT INTO sisy.jobs (name, command, timezone) VALUES ('a', 'true', NULL)",
            "timezone",
        ),
        (
            "INSERT INTO sisy.jobs (name, command, ttl) VALUES ('a', 'true', NULL)",
            "ttl",
        ),
        (
            "INSERT INTO sisy.jobs (name, command, env) VALUES ('a', 'true', NULL)",
            "env",
        ),
        (
            "INSERT INTO sisy.jobs (name, command, jitter) VALUES ('a', 'true', '-1 second')",
            "jitter",
        ),
        (
            "INSERT INTO sisy.jobs (name, command, retry_delay) VALUES ('a', 'true', '-1 second')",
            "retry_delay",
        ),
        (
            "INSERT INTO sisy.jobs (name, command, kill_grace) VALUES ('a', 'true', '-1 second')",
            "kill_grace",
        ),
        (
            "INSERT INTO sisy.jobs (name, command, max_runtime) VALUES ('a', 'true', '0')",
            "max_runtime",
        ),
        (
            "INSERT INTO sisy.jobs (name, command, max_retries) VALUES ('a', 'true', -1)",
            "max_retries",
        ),
        (
            "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('a', 'true', 'sometimes')",
            "overlap",
        ),
        (
            "INSERT INTO sisy.jobs (name, command, env) VALUES ('a', 'true', '[1]')",
            "env",
        ),
        (
            "INSERT INTO sisy.jobs (name, command) VALUES ('', 'true')",
            "name",
        ),
    ] {
        let err = client.execute(sql, &[]).await.expect_err(sql);
        let message = sisyphus::db::error_message(&err);
        assert!(message.contains(column), "{sql}: {message}");
    }
    wait_until(
        &client,
        "nothing inserted",
        Duration::from_secs(1),
        || "SELECT count(*) FROM sisy.jobs".into(),
        |n: i64| n == 0,
    )
    .await;
}

fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Processes of process group `pgid` that are not zombies.
fn live_members_of_group(pgid: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let mut f = rest.split_whitespace();
            let state = f.next().unwrap_or("Z");
            let pgrp: Option<i32> = f.nth(1).and_then(|v| v.parse().ok());
            pgrp == Some(pgid) && state != "Z"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_escaping_its_group_with_setsid_is_still_cleaned_up() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    let dir = shared_dir();
    let pidfile = dir.path().join("escaped.pid");
    let command = format!("setsid sleep 300 & echo $! > {}; exit 0", pidfile.display());
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, kill_grace) VALUES ('escaper', $1, '1 second')",
            &[&command],
        )
        .await
        .unwrap();
    let id = trigger(&client, "escaper").await;
    assert_eq!(wait_finished(&client, id, LONG).await, "succeeded");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        crate::util::process_gone(pid),
        "the setsid escapee {pid} outlived its run"
    );
}

/// A command that starts with `-` is a command for the shell, not options to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_starting_with_a_dash_is_not_taken_for_options() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    let (state, error) = run_job(
        &client,
        "dashed",
        "command",
        "'--version 2>/dev/null; echo ran'",
    )
    .await;
    assert_eq!(state, "succeeded", "{error:?}");
    let out: String = client
        .query_one(
            "SELECT output FROM sisy.runs WHERE job_name = 'dashed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(out, "ran\n");
}

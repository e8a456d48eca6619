//! The core path with real guardians on one real database: schedule → claim → run → record.
//! Each test starts its own guardian processes against its own database and waits on the
//! states the guardians write.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::util::{
    Guardian, fleet, migrated_db, process_gone, shared_dir, trigger, wait_finished, wait_started,
    wait_until,
};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_job_runs_each_occurrence_exactly_once_across_three_guardians() {
    let (db, client) = migrated_db().await;
    let _fleet = fleet(&db, &client, 3, "").await;
    client
        .execute("INSERT INTO sisy.jobs (name, command, schedule) VALUES ('tick', 'true', '* * * * * *')", &[])
        .await
        .unwrap();
    wait_until(
        &client,
        "32 finished occurrences",
        Duration::from_secs(90),
        || "SELECT count(*) FROM sisy.runs WHERE state <> 'running' AND state <> 'pending'".into(),
        |n: i64| n >= 32,
    )
    .await;
    let rows = client
        .query(
            "SELECT scheduled_for, count(*), array_agg(state), array_agg(host) FROM sisy.runs
              WHERE job_name = 'tick' GROUP BY scheduled_for ORDER BY scheduled_for",
            &[],
        )
        .await
        .unwrap();
    let mut previous: Option<DateTime<Utc>> = None;
    for row in &rows {
        let at: DateTime<Utc> = row.get(0);
        let count: i64 = row.get(1);
        let states: Vec<String> = row.get(2);
        assert_eq!(count, 1, "occurrence {at} has {count} runs: {states:?}");
        assert!(
            matches!(states[0].as_str(), "succeeded" | "running" | "pending"),
            "occurrence {at} ended {states:?}"
        );
        if let Some(p) = previous {
            assert_eq!(
                (at - p).num_seconds(),
                1,
                "an occurrence is missing between {p} and {at}"
            );
        }
        previous = Some(at);
    }
    assert!(rows.len() >= 32);
    let hosts: i64 = client
        .query_one(
            "SELECT count(DISTINCT host) FROM sisy.runs WHERE host IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(hosts >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_job_runs_once_per_host_per_occurrence() {
    let (db, client) = migrated_db().await;
    let _fleet = fleet(&db, &client, 3, "").await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, schedule, target)
             VALUES ('everywhere', 'echo $SISY_JOB', '* * * * * *', 'all')",
            &[],
        )
        .await
        .unwrap();
    wait_until(
        &client,
        "three occurrences on all hosts",
        LONG,
        || {
            "SELECT count(*) FROM (SELECT scheduled_for FROM sisy.runs WHERE state = 'succeeded'
           GROUP BY scheduled_for HAVING count(*) = 3) x"
                .into()
        },
        |n: i64| n >= 3,
    )
    .await;
    let bad = client
        .query(
            "SELECT scheduled_for, target_host, count(*) FROM sisy.runs
              GROUP BY scheduled_for, target_host HAVING count(*) > 1 OR bool_or(host <> target_host)",
            &[],
        )
        .await
        .unwrap();
    assert!(
        bad.is_empty(),
        "an occurrence ran twice on a host, or on the wrong host"
    );
    let per_occurrence: Vec<i64> = client
        .query("SELECT count(*) FROM sisy.runs GROUP BY scheduled_for", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        per_occurrence.iter().all(|n| *n == 3),
        "runs per occurrence: {per_occurrence:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_runtime_kills_the_job_and_its_grandchildren() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    let dir = shared_dir();
    let pidfile = dir.path().join("grandchild.pid");
    // The grandchild ignores SIGTERM, so only the SIGKILL after kill_grace ends it.
    let command = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {p}; while :; do sleep 1; done' & sleep 300",
        p = pidfile.display()
    );
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, max_runtime, kill_grace) VALUES ('stuck', $1, '1 second', '1 second')",
            &[&command],
        )
        .await
        .unwrap();
    let id = trigger(&client, "stuck").await;
    assert_eq!(wait_finished(&client, id, LONG).await, "timed_out");
    let row = client
        .query_one(
            "SELECT error, signal, finished_at - started_at FROM sisy.runs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let error: String = row.get(0);
    assert!(error.contains("max_runtime"), "{error}");
    let grandchild: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        process_gone(grandchild),
        "grandchild {grandchild} survived the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_exit_codes_and_signals_are_recorded() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "output_limit = \"1KiB\"");
    client
        .batch_execute(
            r#"INSERT INTO sisy.jobs (name, command) VALUES
                 ('exit7', 'printf "out\n"; printf "err\n" >&2; exit 7'),
                 ('signalled', 'kill -9 $$'),
                 ('chatty', 'head -c 100000 /dev/zero | tr "\0" a; printf "\377\000end"'),
                 ('env', 'echo "$SISY_JOB $SISY_ATTEMPT $GREETING $USER $HOME"; pwd');
               UPDATE sisy.jobs SET env = '{"GREETING": "hi"}', workdir = '/tmp' WHERE name = 'env';"#,
        )
        .await
        .unwrap();
    let exit7 = trigger(&client, "exit7").await;
    let signalled = trigger(&client, "signalled").await;
    let chatty = trigger(&client, "chatty").await;
    let env = trigger(&client, "env").await;
    for id in [exit7, signalled, chatty, env] {
        wait_finished(&client, id, LONG).await;
    }
    let get = |id: i64| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT state, exit_code, signal, output, output_bytes, error FROM sisy.runs WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap()
        }
    };
    let r = get(exit7).await;
    assert_eq!(r.get::<_, String>(0), "failed");
    assert_eq!(r.get::<_, Option<i32>>(1), Some(7));
    assert_eq!(r.get::<_, String>(3), "out\nerr\n");
    assert_eq!(r.get::<_, i64>(4), 8);
    assert_eq!(r.get::<_, String>(5), "exited with code 7");
    // Who ran it, even for a run far shorter than a heartbeat.
    let pid: Option<i32> = client
        .query_one("SELECT pid FROM sisy.runs WHERE id = $1", &[&exit7])
        .await
        .unwrap()
        .get(0);
    assert!(pid.is_some_and(|p| p > 0), "no pid recorded: {pid:?}");

    let r = get(signalled).await;
    assert_eq!(r.get::<_, String>(0), "failed");
    assert_eq!(r.get::<_, Option<i32>>(2), Some(9));

    let r = get(chatty).await;
    assert_eq!(r.get::<_, String>(0), "succeeded");
    let output: String = r.get(3);
    assert_eq!(r.get::<_, i64>(4), 100_005);
    assert!(
        output.ends_with("a\u{FFFD}\u{FFFD}end"),
        "tail: {:?}",
        &output[output.len() - 20..]
    );
    assert!(
        output.len() <= 1024 + 4,
        "output kept {} bytes",
        output.len()
    );

    let r = get(env).await;
    assert_eq!(r.get::<_, String>(3), "env 1 hi nobody /\n/tmp\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_create_the_right_attempts_with_doubling_delay() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, max_retries, retry_delay) VALUES ('flaky', 'exit 1', 2, '1 second')",
            &[],
        )
        .await
        .unwrap();
    trigger(&client, "flaky").await;
    wait_until(
        &client,
        "attempt 3 to fail",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE attempt = 3 AND state = 'failed'".into(),
        |n: i64| n == 1,
    )
    .await;
    let rows = client
        .query(
            "SELECT attempt, reason, state, extract(epoch FROM due_at - lag(finished_at) OVER (ORDER BY attempt))::float8
               FROM sisy.runs ORDER BY attempt",
            &[],
        )
        .await
        .unwrap();
    let attempts: Vec<(i32, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        attempts,
        vec![
            (1, "manual".to_string(), "failed".to_string()),
            (2, "retry".to_string(), "failed".to_string()),
            (3, "retry".to_string(), "failed".to_string()),
        ],
        "attempts (a fourth would exceed max_retries)"
    );
    let delays: Vec<f64> = rows.iter().skip(1).map(|r| r.get(3)).collect();
    assert!(
        (delays[0] - 1.0).abs() < 0.1,
        "delay before attempt 2: {delays:?}"
    );
    assert!(
        (delays[1] - 2.0).abs() < 0.1,
        "delay before attempt 3: {delays:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_occurrences_are_recorded_in_one_row_and_never_run_late() {
    let (db, client) = migrated_db().await;
    // The job was last due ten minutes ago: as if every guardian had been down since.
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, schedule, ttl) VALUES ('minutely', 'true', '* * * * *', '1 minute');
             UPDATE sisy.jobs SET next_due = date_trunc('minute', now()) - interval '10 minutes';",
        )
        .await
        .unwrap();
    let _g = Guardian::start(&db, "g1", "");
    wait_until(
        &client,
        "the missed occurrences recorded",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE state = 'expired'".into(),
        |n: i64| n == 1,
    )
    .await;
    let row = client
        .query_one(
            "SELECT missed_count, error FROM sisy.runs WHERE state = 'expired'",
            &[],
        )
        .await
        .unwrap();
    let (missed, error): (i64, String) = (row.get(0), row.get(1));
    // 10, or 11 if the minute turned while the test started.
    assert!((10..=11).contains(&missed), "missed {missed}: {error}");
    assert!(
        error.contains(&format!("missed {missed} occurrences")),
        "{error}"
    );
    let late: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE started_at > deadline",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(late, 0, "a run started after its deadline");
    // The occurrence still inside its ttl runs.
    wait_until(
        &client,
        "the current occurrence to run",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE state = 'succeeded'".into(),
        |n: i64| n >= 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_run_past_its_deadline_expires_and_never_starts() {
    let (db, client) = migrated_db().await;
    let _g = fleet(&db, &client, 1, "").await;
    client
        .execute("SELECT sisy.drain('g1')", &[])
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, ttl) VALUES ('brief', 'true', '1 second')",
            &[],
        )
        .await
        .unwrap();
    let id = trigger(&client, "brief").await;
    assert_eq!(wait_finished(&client, id, LONG).await, "expired");
    client
        .execute("SELECT sisy.undrain('g1')", &[])
        .await
        .unwrap();
    let started: Option<DateTime<Utc>> = client
        .query_one("SELECT started_at FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(started, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_schedule_is_flagged_and_disturbs_no_guardian() {
    let (db, client) = migrated_db().await;
    let _fleet = fleet(&db, &client, 3, "").await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, schedule) VALUES ('good', 'true', '* * * * * *');
             INSERT INTO sisy.jobs (name, command, schedule) VALUES
                ('bad-minute', 'true', '61 * * * *'),
                ('bad-words', 'true', 'every day at noon'),
                ('bad-fields', 'true', '* * * * * * *');
             INSERT INTO sisy.jobs (name, command, schedule, timezone) VALUES ('bad-zone', 'true', '* * * * *', 'UTC+3');",
        )
        .await
        .unwrap();
    // A zone PostgreSQL itself does not know is refused at INSERT, naming the column.
    let err = client
        .execute("INSERT INTO sisy.jobs (name, command, schedule, timezone) VALUES ('x', 'true', '* * * * *', 'Mars/Base')", &[])
        .await
        .unwrap_err();
    assert!(
        sisyphus::db::error_message(&err).contains("timezone"),
        "{err}"
    );
    wait_until(
        &client,
        "every bad job flagged",
        Duration::from_secs(30),
        || "SELECT count(*) FROM sisy.jobs WHERE schedule_error IS NOT NULL".into(),
        |n: i64| n == 4,
    )
    .await;
    let errors: Vec<(String, String)> = client
        .query("SELECT name, schedule_error FROM sisy.jobs WHERE schedule_error IS NOT NULL ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(errors[0].1.contains("fields"), "{errors:?}");
    assert!(errors[1].1.contains("minute"), "{errors:?}");
    assert!(errors[3].1.contains("UTC+3"), "{errors:?}");
    // The good job keeps running on schedule.
    let before: i64 = client
        .query_one("SELECT count(*) FROM sisy.runs", &[])
        .await
        .unwrap()
        .get(0);
    wait_until(
        &client,
        "the good job to go on running",
        Duration::from_secs(30),
        || "SELECT count(*) FROM sisy.runs WHERE job_name = 'good' AND state = 'succeeded'".into(),
        |n: i64| n >= before + 3,
    )
    .await;
    let bad_runs: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE job_name <> 'good'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad_runs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_as_user_that_is_not_allowed_fails_naming_user_and_host() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g-strict", "");
    let _h = Guardian::start(
        &db,
        "g-lenient",
        "pools = [\"lenient\"]\nallowed_users = [\"daemon\"]",
    );
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, run_as, max_retries) VALUES ('as-daemon', 'id -un', 'daemon', 2);
             INSERT INTO sisy.jobs (name, command, run_as, pool) VALUES ('as-daemon-ok', 'id -un; id -Gn', 'daemon', 'lenient');
             INSERT INTO sisy.jobs (name, command, run_as) VALUES ('as-root', 'id -un', 'root');",
        )
        .await
        .unwrap();
    let refused = trigger(&client, "as-daemon").await;
    let root = trigger(&client, "as-root").await;
    let allowed = trigger(&client, "as-daemon-ok").await;
    assert_eq!(wait_finished(&client, refused, LONG).await, "failed");
    assert_eq!(wait_finished(&client, root, LONG).await, "failed");
    assert_eq!(wait_finished(&client, allowed, LONG).await, "succeeded");
    let error = |id: i64| {
        let client = &client;
        async move {
            client
                .query_one("SELECT error FROM sisy.runs WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let e = error(refused).await;
    assert!(e.contains("'daemon'") && e.contains("g-strict"), "{e}");
    let e = error(root).await;
    assert!(e.contains("'root'") && e.contains("g-strict"), "{e}");
    let retries: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE job_name = 'as-daemon'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(retries, 1, "a refused identity is not retried");
    let output: String = client
        .query_one("SELECT output FROM sisy.runs WHERE id = $1", &[&allowed])
        .await
        .unwrap()
        .get(0);
    assert!(output.starts_with("daemon\n"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_forbid_skips_while_a_run_is_running() {
    let (db, client) = migrated_db().await;
    let _fleet = fleet(&db, &client, 2, "").await;
    client
        .execute("INSERT INTO sisy.jobs (name, command, schedule) VALUES ('slow', 'sleep 2.5', '* * * * * *')", &[])
        .await
        .unwrap();
    wait_until(
        &client,
        "three skipped occurrences",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE state = 'skipped'".into(),
        |n: i64| n >= 3,
    )
    .await;
    let overlapping: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs a JOIN sisy.runs b ON a.id < b.id
              WHERE a.started_at IS NOT NULL AND b.started_at IS NOT NULL
                AND b.started_at < coalesce(a.finished_at, now()) AND a.started_at < coalesce(b.finished_at, now())",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(overlapping, 0, "two runs of a forbid job ran at once");
    let error: String = client
        .query_one(
            "SELECT error FROM sisy.runs WHERE state = 'skipped' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("overlap = forbid"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_releases_the_lease_and_kills_nothing_that_finishes_in_time() {
    let (db, client) = migrated_db().await;
    let mut fleet = fleet(&db, &client, 1, "").await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('short', 'sleep 1; echo done')",
            &[],
        )
        .await
        .unwrap();
    let id = trigger(&client, "short").await;
    wait_started(&client, id).await;
    assert_eq!(
        fleet[0].stop(),
        Some(0),
        "guardian log:\n{}",
        fleet[0].log()
    );
    let state: String = client
        .query_one("SELECT state FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "succeeded");
    let live: bool = client
        .query_one(
            "SELECT lease_until > now() FROM sisy.hosts WHERE name = 'g1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!live, "the lease was not released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_reaches_the_guardian_through_notify_and_the_group_dies() {
    let (db, client) = migrated_db().await;
    // A heartbeat slower than the test's patience: only NOTIFY can deliver the kill in time.
    let _g = Guardian::start(&db, "g1", "heartbeat_interval = \"20s\"\nlease = \"60s\"");
    let dir = shared_dir();
    let pidfile = dir.path().join("child.pid");
    let command = format!(
        "trap '' TERM; sleep 300 & echo $! > {}; wait",
        pidfile.display()
    );
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, kill_grace) VALUES ('deaf', $1, '300 ms')",
            &[&command],
        )
        .await
        .unwrap();
    let id = trigger(&client, "deaf").await;
    wait_started(&client, id).await;
    crate::util::wait_for("the job to write its child's pid", LONG, || {
        pidfile.exists()
    })
    .await;
    let asked = std::time::Instant::now();
    client
        .execute("SELECT sisy.kill($1)", &[&id])
        .await
        .unwrap();
    assert_eq!(
        wait_finished(&client, id, Duration::from_secs(10)).await,
        "killed"
    );
    let took = asked.elapsed();
    eprintln!("kill latency (sisy.kill to run recorded killed, kill_grace 300 ms): {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "kill took {took:?}: not through NOTIFY"
    );
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(process_gone(child), "the job's child survived the kill");
    let error: String = client
        .query_one("SELECT error FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("sisy.kill"), "{error}");
    let retried: i64 = client
        .query_one("SELECT count(*) FROM sisy.runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(retried, 1, "a killed run is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_replace_kills_the_running_run_then_starts() {
    let (db, client) = migrated_db().await;
    let _fleet = fleet(&db, &client, 2, "").await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap, kill_grace) VALUES ('newest', 'sleep 300', 'replace', '1 second')",
            &[],
        )
        .await
        .unwrap();
    let first = trigger(&client, "newest").await;
    wait_started(&client, first).await;
    let second = trigger(&client, "newest").await;
    assert_eq!(wait_finished(&client, first, LONG).await, "killed");
    wait_started(&client, second).await;
    let row = client
        .query_one(
            "SELECT a.error, b.started_at >= a.finished_at FROM sisy.runs a, sisy.runs b WHERE a.id = $1 AND b.id = $2",
            &[&first, &second],
        )
        .await
        .unwrap();
    let (error, after): (String, bool) = (row.get(0), row.get(1));
    assert!(
        error.contains(&format!("run {second}")) && error.contains("replace"),
        "{error}"
    );
    assert!(
        after,
        "the replacement started before the replaced run ended"
    );
    client
        .execute("SELECT sisy.kill($1)", &[&second])
        .await
        .unwrap();
    wait_finished(&client, second, LONG).await;
}

//! `sisy.jobs.max_concurrency` with real guardians: a job's running runs across the fleet never
//! exceed its cap, judged both by the job processes' own clocks (each appends its start and end
//! to a file) and by the runs' started_at / finished_at; runs held back stay pending (they
//! never expire waiting for the cap, though the batch outlasts their ttl) and all run; a
//! change of the cap applies to the runs still waiting; a slot freed on a draining host is
//! taken elsewhere at once; guardians do not spin while runs wait; no cap is the old
//! behaviour.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::Client;

use crate::util::{fleet, migrated_db, shared_dir, wait_until};

/// A job that notes its start and end (process clock) with its run id, sleeping in between.
fn noting_job(log: &Path, sleep: &str) -> String {
    let log = log.display();
    format!(
        "echo \"$SISY_RUN_ID start $(date +%s.%N)\" >> {log}; sleep {sleep}; echo \"$SISY_RUN_ID end $(date +%s.%N)\" >> {log}"
    )
}

/// The most intervals open at once (an end at the same instant as a start closes first).
fn peak(intervals: &[(f64, f64)]) -> usize {
    let mut events: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|(a, b)| [(*a, 1), (*b, -1)])
        .collect();
    events.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let (mut open, mut most) = (0i32, 0i32);
    for (_, step) in events {
        open += step;
        most = most.max(open);
    }
    most as usize
}

/// The job processes' own intervals, from the file they append to: (run id, start, end).
fn process_intervals(log: &Path) -> Vec<(i64, f64, f64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut starts = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [id, what, at] = parts[..] else {
            panic!("a line the job did not write: {line:?}");
        };
        let (id, at): (i64, f64) = (id.parse().unwrap(), at.parse().unwrap());
        match what {
            "start" => {
                assert!(starts.insert(id, at).is_none(), "run {id} started twice");
            }
            _ => out.push((id, starts.remove(&id).expect("an end without a start"), at)),
        }
    }
    assert!(
        starts.is_empty(),
        "runs started and never ended: {starts:?}"
    );
    out
}

/// The runs' intervals by the database clock (a run still running: until now), for runs of
/// `job` with an id above `since`.
async fn db_intervals(client: &Client, job: &str, since: i64) -> Vec<(f64, f64)> {
    client
        .query(
            "SELECT extract(epoch FROM started_at)::float8,
                    extract(epoch FROM coalesce(finished_at, now()))::float8
               FROM sisy.runs WHERE job_name = $1 AND started_at IS NOT NULL AND id > $2",
            &[&job, &since],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn add_job(client: &Client, name: &str, command: &str, cap: Option<i32>) {
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap, ttl, max_concurrency)
             VALUES ($1, $2, 'allow', '3 seconds', $3)",
            &[&name, &command, &cap],
        )
        .await
        .unwrap();
}

async fn trigger_many(client: &Client, job: &str, n: i32) {
    client
        .execute(
            "SELECT sisy.trigger($1) FROM generate_series(1, $2)",
            &[&job, &n],
        )
        .await
        .unwrap();
}

async fn wait_all_final(client: &Client, job: &str, n: i64, timeout: Duration) {
    let sql = format!(
        "SELECT count(*) FROM sisy.runs WHERE job_name = '{job}' AND state NOT IN ('pending', 'running')"
    );
    wait_until(
        client,
        "every run final",
        timeout,
        || sql.clone(),
        |v: i64| v >= n,
    )
    .await;
}

async fn states(client: &Client, job: &str) -> Vec<(String, i64)> {
    client
        .query(
            "SELECT state, count(*) FROM sisy.runs WHERE job_name = $1 GROUP BY state ORDER BY state",
            &[&job],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_job_never_runs_more_than_its_max_concurrency_across_three_guardians() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let log = dir.path().join("intervals");
    // 100 runs of 0.4 s, 5 at a time: at least 8 s, well past the 3 s ttl of each.
    add_job(&client, "capped", &noting_job(&log, "0.4"), Some(5)).await;
    let _fleet = fleet(&db, &client, 3, "capacity = 8").await;
    trigger_many(&client, "capped", 100).await;
    wait_all_final(&client, "capped", 100, Duration::from_secs(180)).await;
    assert_eq!(
        states(&client, "capped").await,
        vec![("succeeded".to_string(), 100)],
        "every run succeeds, none expires while it waits for the cap"
    );
    let processes = process_intervals(&log);
    assert_eq!(processes.len(), 100, "each run's process ran once");
    let by_process: Vec<(f64, f64)> = processes.iter().map(|(_, a, b)| (*a, *b)).collect();
    let by_rows = db_intervals(&client, "capped", 0).await;
    let (p, r) = (peak(&by_process), peak(&by_rows));
    eprintln!("peak running at once: {p} by the processes, {r} by started_at/finished_at");
    assert!(p <= 5, "{p} job processes ran at once; the cap is 5");
    assert!(
        r <= 5,
        "{r} runs were running at once by their rows; the cap is 5"
    );
    assert!(p >= 2, "the cap is a limit, not a queue of one: peak {p}");
    let hosts: i64 = client
        .query_one(
            "SELECT count(DISTINCT host) FROM sisy.runs WHERE job_name = 'capped'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!("the runs spread over {hosts} guardians");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_max_concurrency_runs_are_limited_by_capacity_only() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let log = dir.path().join("intervals");
    add_job(&client, "free", &noting_job(&log, "2"), None).await;
    let _fleet = fleet(&db, &client, 3, "capacity = 8").await;
    trigger_many(&client, "free", 20).await;
    wait_all_final(&client, "free", 20, Duration::from_secs(120)).await;
    assert_eq!(
        states(&client, "free").await,
        vec![("succeeded".to_string(), 20)]
    );
    let intervals: Vec<(f64, f64)> = process_intervals(&log)
        .iter()
        .map(|(_, a, b)| (*a, *b))
        .collect();
    let p = peak(&intervals);
    eprintln!("peak running at once without a cap: {p}");
    assert!(
        p > 5,
        "without a cap 20 runs of 2 s on 24 slots overlap more than 5: {p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_max_concurrency_applies_to_the_runs_still_waiting() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let log = dir.path().join("intervals");
    add_job(&client, "throttled", &noting_job(&log, "0.5"), Some(1)).await;
    let _fleet = fleet(&db, &client, 3, "capacity = 8").await;
    trigger_many(&client, "throttled", 24).await;
    wait_until(
        &client,
        "three runs done one at a time",
        Duration::from_secs(60),
        || "SELECT count(*) FROM sisy.runs WHERE state = 'succeeded'".into(),
        |n: i64| n >= 3,
    )
    .await;
    let serial = peak(&db_intervals(&client, "throttled", 0).await);
    assert_eq!(serial, 1, "cap 1: one run at a time");
    // Raised while 20 runs wait: the next admission reads the new cap under the job lock.
    let mark: i64 = client
        .query_one(
            "UPDATE sisy.jobs SET max_concurrency = 4 WHERE name = 'throttled'
             RETURNING (SELECT coalesce(max(id), 0) FROM sisy.runs WHERE started_at IS NOT NULL)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_all_final(&client, "throttled", 24, Duration::from_secs(120)).await;
    assert_eq!(
        states(&client, "throttled").await,
        vec![("succeeded".to_string(), 24)]
    );
    let after = peak(&db_intervals(&client, "throttled", mark).await);
    eprintln!("peak after raising the cap to 4: {after}");
    assert!(after <= 4, "cap 4, yet {after} ran at once");
    assert!(
        after >= 2,
        "the raised cap did not take effect: peak {after}"
    );
    let all: Vec<(f64, f64)> = process_intervals(&log)
        .iter()
        .map(|(_, a, b)| (*a, *b))
        .collect();
    assert!(peak(&all) <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_concurrency_below_one_is_refused_with_what_to_do() {
    let (_db, client) = migrated_db().await;
    add_job(&client, "j", "true", None).await;
    for bad in [0, -1] {
        let e = client
            .execute(
                "UPDATE sisy.jobs SET max_concurrency = $1 WHERE name = 'j'",
                &[&bad],
            )
            .await
            .unwrap_err();
        let text = e.as_db_error().unwrap().message().to_string();
        assert_eq!(
            text,
            format!(
                "sisy.jobs.max_concurrency must be at least 1 (or NULL for no limit), got {bad}"
            )
        );
        let e = client
            .execute(
                "INSERT INTO sisy.jobs (name, command, max_concurrency) VALUES ('k', 'true', $1)",
                &[&bad],
            )
            .await
            .unwrap_err();
        assert!(
            e.as_db_error()
                .unwrap()
                .message()
                .contains("max_concurrency must be at least 1")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardians_do_not_spin_on_runs_held_back_by_the_cap() {
    let (db, client) = migrated_db().await;
    add_job(&client, "slow", "sleep 4", Some(1)).await;
    let _fleet = fleet(&db, &client, 3, "capacity = 8").await;
    trigger_many(&client, "slow", 6).await;
    wait_until(
        &client,
        "the first run started",
        Duration::from_secs(30),
        || "SELECT count(*) FROM sisy.runs WHERE started_at IS NOT NULL".into(),
        |n: i64| n >= 1,
    )
    .await;
    // Five runs wait for the one slot: a guardian claiming and releasing them, or polling
    // for them, would commit hundreds of transactions a second. Measured over a window.
    let commits = || async {
        client
            .execute("SELECT pg_stat_clear_snapshot()", &[])
            .await
            .unwrap();
        let n: i64 = client
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    let before = commits().await;
    let window = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The statistics reach the view within a second or so.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rate = (commits().await - before) as f64 / window.elapsed().as_secs_f64();
    let waiting: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE started_at IS NULL AND state IN ('pending', 'running')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!("{rate:.0} commits/s while {waiting} runs wait for the cap");
    assert!(
        rate < 60.0,
        "{rate:.0} commits a second while runs wait for the cap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_freed_on_a_draining_host_is_taken_by_another_guardian_at_once() {
    let (db, client) = migrated_db().await;
    add_job(&client, "handover", "sleep 2", Some(2)).await;
    let _fleet = fleet(&db, &client, 3, "capacity = 8").await;
    trigger_many(&client, "handover", 6).await;
    wait_until(
        &client,
        "two runs started",
        Duration::from_secs(30),
        || "SELECT count(*) FROM sisy.runs WHERE started_at IS NOT NULL".into(),
        |n: i64| n >= 2,
    )
    .await;
    // The hosts of the two running runs take no more work: the slots they free when their
    // runs end are for the other guardians, which sleep (nothing they may claim is due).
    let first: Vec<i64> = client
        .query(
            "SELECT sisy.drain(host), id FROM sisy.runs WHERE started_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(1))
        .collect();
    assert_eq!(first.len(), 2);
    wait_all_final(&client, "handover", 6, Duration::from_secs(120)).await;
    assert_eq!(
        states(&client, "handover").await,
        vec![("succeeded".to_string(), 6)],
        "the runs left waiting were run by the other guardians"
    );
    let row = client
        .query_one(
            "SELECT (SELECT extract(epoch FROM min(started_at))::float8 FROM sisy.runs WHERE id <> ALL ($1)),
                    (SELECT extract(epoch FROM min(finished_at))::float8 FROM sisy.runs WHERE id = ANY ($1))",
            &[&first],
        )
        .await
        .unwrap();
    let (next, freed): (Option<f64>, Option<f64>) = (row.get(0), row.get(1));
    let gap = next.unwrap() - freed.unwrap();
    eprintln!("a freed slot was taken {gap:.3} s after the run that held it ended");
    assert!(gap < 5.0, "the freed slot waited {gap:.1} s for a guardian");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_job_with_overlap_forbid_still_skips() {
    let (db, client) = migrated_db().await;
    add_job(&client, "lonely", "sleep 3", Some(3)).await;
    client
        .execute("UPDATE sisy.jobs SET overlap = 'forbid'", &[])
        .await
        .unwrap();
    let _fleet = fleet(&db, &client, 2, "capacity = 8").await;
    trigger_many(&client, "lonely", 3).await;
    wait_all_final(&client, "lonely", 3, Duration::from_secs(60)).await;
    assert_eq!(
        states(&client, "lonely").await,
        vec![("skipped".to_string(), 2), ("succeeded".to_string(), 1)],
        "a cap of 3 does not lift overlap = forbid"
    );
}

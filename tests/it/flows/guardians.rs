//! Flows with real guardians and real processes: a diamond runs in order, twelve upstreams
//! released at one instant under three guardians decide their join exactly once (round after
//! round), a lost upstream's retry is waited for (dkron #285), an upstream killed by
//! `sisy.kill`, suspended and deleted members, `target = 'all'` members and upstreams,
//! and the helpers the other real-guardian tests share (guardians_control.rs).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::{exec, flow_state, member, open, runs_of};
use crate::util::{
    Guardian, fleet, migrated_db, process_gone, processes_with_env, shared_dir, until_file,
    wait_for, wait_until,
};

pub(super) const LONG: Duration = Duration::from_secs(60);

/// Waits until flow run `fr` has ended; its state.
pub(super) async fn ended(client: &Client, fr: i64) -> String {
    wait_until(
        client,
        &format!("flow run {fr} to end"),
        LONG,
        || format!("SELECT state FROM sisy.flow_runs WHERE id = {fr}"),
        |s: String| s != "running",
    )
    .await
}

/// Waits until `job` has a run in flow run `fr` whose process runs; its pid.
pub(super) async fn running(client: &Client, fr: i64, job: &str) -> i32 {
    wait_until(
        client,
        &format!("{job} to run in flow run {fr}"),
        LONG,
        || {
            format!(
                "SELECT coalesce(max(pid), 0) FROM sisy.runs
                  WHERE flow_run_id = {fr} AND job_name = '{job}' AND state = 'running'"
            )
        },
        |pid: i32| pid > 0,
    )
    .await
}

/// (started_at, finished_at) of `job`'s runs in `fr`: the earliest start, the latest end.
pub(super) async fn span(client: &Client, fr: i64, job: &str) -> (DateTime<Utc>, DateTime<Utc>) {
    let row = client
        .query_one(
            "SELECT min(started_at), max(finished_at) FROM sisy.runs
              WHERE flow_run_id = $1 AND job_name = $2 AND state = 'succeeded'",
            &[&fr, &job],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Kills what is left of the jobs tagged `tag` (a job a test left waiting).
pub(super) fn reap(tag: &str) {
    for (pid, _) in processes_with_env("FLOW_TAG", tag) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_runs_each_member_only_after_its_upstreams_finished() {
    let (db, client) = migrated_db().await;
    let _fleet = fleet(&db, &client, 2, "capacity = 4").await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES
            ('a', 'sleep 0.3'), ('b', 'sleep 0.5'), ('c', 'sleep 0.1'), ('d', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'a'), ('d', 'b'), ('d', 'c');",
    )
    .await;
    for _ in 0..2 {
        let fr = open(&client, "a").await;
        assert_eq!(ended(&client, fr).await, "succeeded");
        let a = span(&client, fr, "a").await;
        let b = span(&client, fr, "b").await;
        let c = span(&client, fr, "c").await;
        let d = span(&client, fr, "d").await;
        assert!(b.0 >= a.1 && c.0 >= a.1, "a {a:?} b {b:?} c {c:?}");
        assert!(d.0 >= b.1 && d.0 >= c.1, "b {b:?} c {c:?} d {d:?}");
        for job in ["a", "b", "c", "d"] {
            assert_eq!(runs_of(&client, fr, job).await, 1, "{job}");
        }
    }
}

/// Twelve upstreams wait on one file; created, they all end within ~100 ms of each other,
/// their results written by three guardians at once. Their join is decided exactly once and
/// the flow run ends, every round, without the safety net.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_upstreams_released_at_once_under_three_guardians_decide_their_join_once() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let flag = dir.path().join("go");
    let tag = format!("fanin-{}", db.name);
    // Four slots each: the twelve need all three guardians.
    let _fleet = fleet(&db, &client, 3, "capacity = 4").await;
    // Polling every 10 ms: they end within ~10 ms of each other.
    let wait = format!("while [ ! -e {} ]; do sleep 0.01; done", flag.display());
    let mut sql = format!(
        "INSERT INTO sisy.jobs (name, command, env) VALUES ('start', 'true', '{{\"FLOW_TAG\": \"{tag}\"}}'),
                                                          ('join', 'true', '{{\"FLOW_TAG\": \"{tag}\"}}');"
    );
    for i in 0..12 {
        sql += &format!(
            "INSERT INTO sisy.jobs (name, command, env) VALUES ('u{i}', '{}', '{{\"FLOW_TAG\": \"{tag}\"}}');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('u{i}', 'start'), ('join', 'u{i}');",
            wait
        );
    }
    exec(&client, &sql).await;
    for round in 0..5 {
        let _ = std::fs::remove_file(&flag);
        let fr = open(&client, "start").await;
        wait_until(
            &client,
            "the twelve upstreams to run",
            LONG,
            || {
                format!(
                    "SELECT count(*) FROM sisy.runs WHERE flow_run_id = {fr} AND state = 'running'
                        AND started_at IS NOT NULL AND job_name LIKE 'u%'"
                )
            },
            |n: i64| n == 12,
        )
        .await;
        std::fs::write(&flag, "").unwrap();
        let state = ended(&client, fr).await;
        assert_eq!(state, "succeeded", "round {round}");
        assert_eq!(runs_of(&client, fr, "join").await, 1, "round {round}");
        let hosts: i64 = client
            .query_one(
                "SELECT count(DISTINCT host) FROM sisy.runs WHERE flow_run_id = $1 AND job_name LIKE 'u%'",
                &[&fr],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(hosts, 3, "round {round}");
    }
    reap(&tag);
}

/// An upstream whose guardian is SIGKILLed is declared lost and retried on another; its
/// downstream waits for the last attempt and runs once, after the retry succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_upstream_is_retried_and_its_downstream_waits_for_the_last_attempt() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let flag = dir.path().join("go");
    let tag = format!("lost-{}", db.name);
    exec(
        &client,
        &format!(
            "INSERT INTO sisy.jobs (name, command, env) VALUES ('a', 'true', '{{\"FLOW_TAG\": \"{tag}\"}}'),
                                                              ('c', 'true', '{{\"FLOW_TAG\": \"{tag}\"}}');
             INSERT INTO sisy.jobs (name, command, max_retries, retry_delay, env)
                VALUES ('b', '{}', 1, '0', '{{\"FLOW_TAG\": \"{tag}\"}}');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b');",
            until_file(&flag)
        ),
    )
    .await;
    let mut g1 = Guardian::start(&db, "g1", "");
    let fr = open(&client, "a").await;
    running(&client, fr, "b").await;
    let _g2 = Guardian::start(&db, "g2", "");
    g1.kill();
    wait_until(
        &client,
        "b's first attempt to be declared lost",
        LONG,
        || format!("SELECT count(*) FROM sisy.runs WHERE flow_run_id = {fr} AND job_name = 'b' AND state = 'lost'"),
        |n: i64| n == 1,
    )
    .await;
    // The retry runs (on g2); meanwhile c is not decided.
    wait_until(
        &client,
        "b's retry to run on g2",
        LONG,
        || {
            format!(
                "SELECT count(*) FROM sisy.runs WHERE flow_run_id = {fr} AND job_name = 'b'
                    AND attempt = 2 AND state = 'running' AND host = 'g2' AND started_at IS NOT NULL"
            )
        },
        |n: i64| n == 1,
    )
    .await;
    assert_eq!(
        runs_of(&client, fr, "c").await,
        0,
        "c decided before b's last attempt"
    );
    assert_eq!(flow_state(&client, fr).await, "running");
    std::fs::write(&flag, "").unwrap();
    assert_eq!(ended(&client, fr).await, "succeeded");
    assert_eq!(runs_of(&client, fr, "c").await, 1);
    let retry_end: DateTime<Utc> = client
        .query_one(
            "SELECT finished_at FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'b' AND attempt = 2",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert!(span(&client, fr, "c").await.0 >= retry_end);
    reap(&tag);
}

/// An upstream killed by `sisy.kill` is a failure, not retried (the kill was asked for): the
/// all_success member is upstream_failed, a one_failed fallback runs; its process is gone.
/// Then rerun_flow from it (its command fixed) runs it and what follows, and the flow run
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_by_sisy_kill_fails_its_flow_and_rerun_flow_recovers_it() {
    let (db, client) = migrated_db().await;
    let tag = format!("killed-{}", db.name);
    let _g = Guardian::start(&db, "g1", "capacity = 4");
    exec(
        &client,
        &format!(
            "INSERT INTO sisy.jobs (name, command, env) VALUES ('a', 'true', '{{\"FLOW_TAG\": \"{tag}\"}}'),
                                                              ('c', 'true', '{{\"FLOW_TAG\": \"{tag}\"}}');
             INSERT INTO sisy.jobs (name, command, max_retries, retry_delay, env)
                VALUES ('b', 'sleep 600', 3, '0', '{{\"FLOW_TAG\": \"{tag}\"}}');
             INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('hook', 'true', 'one_failed');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b'), ('hook', 'b');"
        ),
    )
    .await;
    let fr = open(&client, "a").await;
    let pid = running(&client, fr, "b").await;
    exec(
        &client,
        &format!("SELECT sisy.kill(id) FROM sisy.runs WHERE flow_run_id = {fr} AND job_name = 'b'"),
    )
    .await;
    assert_eq!(ended(&client, fr).await, "failed");
    assert_eq!(member(&client, fr, "b").await.0, "killed");
    assert_eq!(
        runs_of(&client, fr, "b").await,
        1,
        "a killed run was retried"
    );
    let (state, error) = member(&client, fr, "c").await;
    assert_eq!(state, "upstream_failed");
    assert!(error.contains("'b'"), "{error}");
    assert_eq!(member(&client, fr, "hook").await.0, "succeeded");
    wait_for("b's process to be gone", LONG, || process_gone(pid)).await;

    exec(
        &client,
        "UPDATE sisy.jobs SET command = 'true' WHERE name = 'b'",
    )
    .await;
    let n: i32 = client
        .query_one(&format!("SELECT sisy.rerun_flow({fr}, 'b')"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "b, c and hook");
    assert_eq!(ended(&client, fr).await, "succeeded");
    assert_eq!(member(&client, fr, "c").await.0, "succeeded");
    assert_eq!(member(&client, fr, "hook").await.0, "skipped");
    let a: i64 = runs_of(&client, fr, "a").await;
    assert_eq!(a, 1, "a succeeded: not run again");
    reap(&tag);
}

/// A member suspended when reached is skipped (its error says so), and so is what needs it;
/// a member deleted before it is reached is cancelled; the flow run still ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_and_deleted_members_are_recorded_and_the_flow_run_ends() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let flag = dir.path().join("go");
    let _g = Guardian::start(&db, "g1", "capacity = 4");
    exec(
        &client,
        &format!(
            "INSERT INTO sisy.jobs (name, command) VALUES ('a', '{}'), ('b', 'true'), ('c', 'true'), ('d', 'true');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b'), ('d', 'a');",
            until_file(&flag)
        ),
    )
    .await;
    let fr = open(&client, "a").await;
    running(&client, fr, "a").await;
    exec(
        &client,
        "SELECT sisy.suspend('b'); DELETE FROM sisy.jobs WHERE name = 'd';",
    )
    .await;
    std::fs::write(&flag, "").unwrap();
    assert_eq!(ended(&client, fr).await, "succeeded");
    let (state, error) = member(&client, fr, "b").await;
    assert_eq!(state, "skipped");
    assert!(error.contains("'b' is suspended"), "{error}");
    assert_eq!(member(&client, fr, "c").await.0, "skipped");
    let (state, error) = member(&client, fr, "d").await;
    assert_eq!(state, "cancelled");
    assert!(error.contains("deleted"), "{error}");
}

/// A `target = 'all'` upstream runs on every host; its downstream `target = 'all'` member
/// starts only after all of them finished, and the member after it only after all of its.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_all_upstreams_and_members_wait_for_every_host() {
    let (db, client) = migrated_db().await;
    let _fleet = fleet(&db, &client, 2, "capacity = 4").await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('z', 'true');
         INSERT INTO sisy.jobs (name, command, target) VALUES ('wide', 'sleep 0.3', 'all'), ('wider', 'sleep 0.2', 'all');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('wide', 'a'), ('wider', 'wide'), ('z', 'wider');",
    )
    .await;
    let fr = open(&client, "a").await;
    assert_eq!(ended(&client, fr).await, "succeeded");
    for job in ["wide", "wider"] {
        let hosts: Vec<String> = client
            .query_one(
                "SELECT array_agg(host ORDER BY host) FROM sisy.runs WHERE flow_run_id = $1 AND job_name = $2",
                &[&fr, &job],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(hosts, ["g1", "g2"], "{job}");
    }
    let wide = span(&client, fr, "wide").await;
    let wider = span(&client, fr, "wider").await;
    let z = span(&client, fr, "z").await;
    assert!(wider.0 >= wide.1, "wide {wide:?} wider {wider:?}");
    assert!(z.0 >= wider.1, "wider {wider:?} z {z:?}");
    assert_eq!(runs_of(&client, fr, "z").await, 1);
}

/// A lost upstream without retries, declared lost by another guardian's heartbeat: the
/// heartbeat's statement decides what follows (upstream_failed, and the fallback runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_upstream_without_retries_is_decided_by_the_heartbeat_that_declared_it() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let flag = dir.path().join("go");
    let tag = format!("lost0-{}", db.name);
    exec(
        &client,
        &format!(
            "INSERT INTO sisy.jobs (name, command, pool) VALUES ('a', 'true', 'one'), ('c', 'true', 'two');
             INSERT INTO sisy.jobs (name, command, pool, env)
                VALUES ('b', '{}', 'one', '{{\"FLOW_TAG\": \"{tag}\"}}');
             INSERT INTO sisy.jobs (name, command, pool, trigger_rule) VALUES ('hook', 'true', 'two', 'one_failed');
             INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a'), ('c', 'b'), ('hook', 'b');",
            until_file(&flag)
        ),
    )
    .await;
    let mut g1 = Guardian::start(&db, "g1", "pools = [\"one\"]");
    let _g2 = Guardian::start(&db, "g2", "pools = [\"two\"]");
    let fr = open(&client, "a").await;
    running(&client, fr, "b").await;
    g1.kill();
    assert_eq!(ended(&client, fr).await, "failed");
    assert_eq!(member(&client, fr, "b").await.0, "lost");
    assert_eq!(member(&client, fr, "c").await.0, "upstream_failed");
    assert_eq!(member(&client, fr, "hook").await.0, "succeeded");
    std::fs::write(&flag, "").unwrap();
    reap(&tag);
}

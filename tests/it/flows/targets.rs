//! `target = 'all'` members and roots, decided by the database with run states driven by
//! SQL host by host: a member is a success only if every host's last attempt succeeded.

use super::{drive, exec, flow_state, member, open, runs_of};
use crate::util::migrated_db;

/// Ends the pending run of `job` for `host` in flow run `fr` with `state` and `result`.
async fn drive_host(
    client: &tokio_postgres::Client,
    fr: i64,
    job: &str,
    host: &str,
    state: &str,
    result: &str,
) {
    let n = client
        .execute(
            "WITH r AS (UPDATE sisy.runs SET state = 'running', host = target_host
                         WHERE flow_run_id = $1 AND job_name = $2 AND target_host = $3 AND state = 'pending'
                     RETURNING id)
             SELECT count(*) FROM r",
            &[&fr, &job, &host],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = client
        .execute(
            "UPDATE sisy.runs SET state = $4, finished_at = now(), result = $5::text::jsonb
              WHERE flow_run_id = $1 AND job_name = $2 AND target_host = $3 AND state = 'running'",
            &[&fr, &job, &host, &state, &result],
        )
        .await
        .unwrap();
    assert_eq!(n, 1, "{job} on {host}");
}

/// A `target = 'all'` member: its downstream reads all hosts' runs together (success only
/// if every host's last attempt succeeded), waits for a host's retry, and gets every host's
/// result; a `target = 'all'` root whose run failed on one host fails its flow run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_all_member_is_a_success_only_if_every_host_s_last_attempt_succeeded() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.hosts (name, lease_until) VALUES ('h1', now() + interval '1 hour'), ('h2', now() + interval '1 hour');
         INSERT INTO sisy.jobs (name, command, overlap) VALUES ('a', 'true', 'allow');
         INSERT INTO sisy.jobs (name, command, target, max_retries, retry_delay) VALUES ('w', 'true', 'all', 1, '0');
         INSERT INTO sisy.jobs (name, command) VALUES ('z', 'true');
         INSERT INTO sisy.jobs (name, command, trigger_rule) VALUES ('hook', 'true', 'one_failed');
         INSERT INTO sisy.jobs (name, command, target, overlap) VALUES ('wide', 'true', 'all', 'allow'), ('after', 'true', 'any', 'forbid');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('w', 'a'), ('z', 'w'), ('hook', 'w'), ('after', 'wide');",
    )
    .await;
    // h2's first attempt lost, its retry succeeds: z waits for it, then runs.
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", None).await;
    drive_host(&client, fr, "w", "h1", "succeeded", "1").await;
    drive_host(&client, fr, "w", "h2", "lost", "null").await;
    assert_eq!(
        runs_of(&client, fr, "z").await,
        0,
        "decided before h2's retry"
    );
    drive_host(&client, fr, "w", "h2", "succeeded", "2").await;
    assert_eq!(member(&client, fr, "z").await.0, "pending");
    assert_eq!(member(&client, fr, "hook").await.0, "skipped");
    let inputs: serde_json::Value = client
        .query_one(
            "SELECT inputs FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'z'",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(inputs, serde_json::json!({"w": {"h1": 1, "h2": 2}}));

    // h2 fails twice (its one retry too): a failure, named; the fallback runs.
    let fr = open(&client, "a").await;
    drive(&client, fr, "a", "succeeded", None).await;
    drive_host(&client, fr, "w", "h1", "succeeded", "1").await;
    drive_host(&client, fr, "w", "h2", "failed", "null").await;
    drive_host(&client, fr, "w", "h2", "failed", "null").await;
    let (state, error) = member(&client, fr, "z").await;
    assert_eq!(state, "upstream_failed");
    assert!(error.contains("'w'"), "{error}");
    assert_eq!(member(&client, fr, "hook").await.0, "pending");

    // A target = 'all' root failing on one host.
    let fr = open(&client, "wide").await;
    drive_host(&client, fr, "wide", "h1", "succeeded", "null").await;
    assert_eq!(runs_of(&client, fr, "after").await, 0);
    drive_host(&client, fr, "wide", "h2", "failed", "null").await;
    assert_eq!(member(&client, fr, "after").await.0, "upstream_failed");
    assert_eq!(flow_state(&client, fr).await, "failed");
}

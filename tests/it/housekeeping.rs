//! Housekeeping against a real database: old finished runs go, in batches; nothing else does.

use std::time::Duration;

use crate::util::migrated_db;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_older_than_the_retention_is_deleted_in_batches() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('j', 'true');
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline, state, finished_at)
             SELECT 1, 'j', 'default', now() - make_interval(days => 40, secs => i), 'schedule',
                    now() - interval '40 days', now() - interval '40 days', 'succeeded', now() - interval '40 days'
               FROM generate_series(1, 2500) i;
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline, state, finished_at)
             SELECT 1, 'j', 'default', now() - make_interval(secs => i), 'schedule', now(), now(), 'failed', now()
               FROM generate_series(1, 10) i;
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline)
             VALUES (1, 'j', 'default', now() - interval '50 days', 'schedule', now(), now() + interval '1 hour');",
        )
        .await
        .unwrap();
    let pool = sisyphus::db::pool(&db.url, 2).unwrap();
    let outcome = sisyphus::service::reaper::prune(&pool, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!(outcome.runs, 2500);
    let left: Vec<String> = client
        .query("SELECT state FROM sisy.runs ORDER BY state", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left.len(), 11, "recent and unfinished runs stay");
    assert!(left.contains(&"pending".to_string()));
}

/// A running run whose host has no row (written by hand) is found by nobody's heartbeat: the
/// rescue finds dead hosts through their rows. Housekeeping declares it lost, and leaves the
/// running runs of a host that has a row alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_declares_lost_a_running_run_whose_host_has_no_row() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('j', 'true');
             INSERT INTO sisy.hosts (name, pools) VALUES ('alive', '{default}');
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline, state, host, started_at)
             VALUES (1, 'j', 'default', now(), 'schedule', now(), now() + interval '1 hour', 'running', 'ghost', now()),
                    (1, 'j', 'default', now() - interval '1 minute', 'schedule', now(), now() + interval '1 hour', 'running', 'alive', now());",
        )
        .await
        .unwrap();
    let pool = sisyphus::db::pool(&db.url, 2).unwrap();
    let outcome = sisyphus::service::reaper::prune(&pool, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!(outcome.hostless, 1);
    let runs: Vec<(String, String, Option<String>)> = client
        .query(
            "SELECT host, state, error FROM sisy.runs ORDER BY host",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(runs[0], ("alive".into(), "running".into(), None));
    assert_eq!(runs[1].1, "lost");
    let error = runs[1].2.clone().unwrap_or_default();
    assert!(
        error.contains("'ghost'") && error.contains("no row"),
        "{error}"
    );
}

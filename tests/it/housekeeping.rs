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

//! Housekeeping against a real database: old finished runs go, in batches; nothing else does.
//! And autovacuum (migration 0017) keeps the dead entries runs leave in the indexes in check.

use std::time::Duration;

use crate::pg;
use crate::util::{migrated_db, migrated_db_on, wait_until};

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

/// Migration 0017: sisy.runs is vacuumed after a fixed number of dead versions, and always
/// with its indexes (no "bypass" when few heap pages hold dead items).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_vacuumed_by_dead_versions_and_with_their_indexes() {
    let (_db, client) = migrated_db().await;
    let options: Vec<String> = client
        .query_one(
            "SELECT reloptions FROM pg_class WHERE oid = 'sisy.runs'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for expected in [
        "autovacuum_vacuum_scale_factor=0",
        "autovacuum_vacuum_threshold=10000",
        "vacuum_index_cleanup=on",
    ] {
        assert!(
            options.iter().any(|o| o == expected),
            "{expected} not in {options:?}"
        );
    }
}

/// What 0017 is for: a large history whose default autovacuum threshold (20 % of the table)
/// is far away still has the dead entries that finished runs leave in runs_pending_due
/// removed by autovacuum, so the claim does not walk them. 250,000 finished runs put the
/// default threshold at 50,050 dead versions; 20,000 runs that went through pending and
/// running leave 40,000 and fill some hundred leaf pages of runs_pending_due with dead
/// entries. Without the migration autovacuum would not come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autovacuum_cleans_the_pending_index_of_a_large_history() {
    // Autovacuum looks at each database once per naptime: one second here, one minute by
    // default.
    let server = pg::Server::start_private_with(&["autovacuum=on", "autovacuum_naptime=1"]);
    let (_db, client) = migrated_db_on(&server).await;
    // Off while the history is loaded, so that the insert-driven vacuum a load brings does
    // not count; the manual VACUUM below resets what autovacuum counts.
    client
        .batch_execute(
            "CREATE EXTENSION pgstattuple;
             ALTER TABLE sisy.runs SET (autovacuum_enabled = false);
             INSERT INTO sisy.jobs (name, command) VALUES ('j', 'true');
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline, state, finished_at)
             SELECT 1, 'j', 'default', now() - make_interval(secs => i), 'schedule',
                    now() - make_interval(secs => i), now(), 'succeeded', now()
               FROM generate_series(100001, 350000) i;",
        )
        .await
        .unwrap();
    client
        .batch_execute("VACUUM ANALYZE sisy.runs")
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline)
             SELECT 1, 'j', 'default', now() - make_interval(secs => i), 'schedule',
                    now() - make_interval(secs => i), now() + interval '1 hour'
               FROM generate_series(1, 20000) i;
             UPDATE sisy.runs SET state = 'running', host = 'h', claimed_at = now(),
                    started_at = now(), heartbeat_at = now(), pid = 1
              WHERE state = 'pending';
             UPDATE sisy.runs SET state = 'succeeded', exit_code = 0, finished_at = now()
              WHERE state = 'running';",
        )
        .await
        .unwrap();
    // Leaf pages in use, read without touching the heap (an index scan would prune what it
    // visits and so lower the dead count autovacuum goes by).
    let leaf_pages = "SELECT leaf_pages FROM pgstatindex('sisy.runs_pending_due')";
    let before: i64 = client.query_one(leaf_pages, &[]).await.unwrap().get(0);
    assert!(before >= 50, "the churn filled {before} leaf pages");
    client
        .batch_execute("ALTER TABLE sisy.runs RESET (autovacuum_enabled)")
        .await
        .unwrap();
    wait_until(
        &client,
        "autovacuum of sisy.runs",
        Duration::from_secs(60),
        || {
            "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = 'sisy.runs'::regclass"
                .into()
        },
        |n: i64| n >= 1,
    )
    .await;
    let after: i64 = client.query_one(leaf_pages, &[]).await.unwrap().get(0);
    assert!(
        after <= 2,
        "runs_pending_due still has {after} leaf pages (of {before}) after autovacuum"
    );
}

//! Rolling upgrades: a guardian keeps starting on a schema migrated by a newer sisy when
//! every migration it does not know declared itself compatible with it, and refuses, with
//! what to do, a schema too old for it or newer and incompatible. The newer migrations are
//! played here the way a newer `sisy db migrate` records them: a row in `sisy.migrations`.

use std::time::Duration;

use tokio_postgres::Client;

use crate::pg::TestDb;
use crate::util::{Guardian, migrated_db, process_gone, sisy, wait_finished, wait_for};

/// Records migration `version` as a newer sisy would, declared compatible with `with`.
async fn future_migration(client: &Client, version: i32, with: Option<i32>) {
    client
        .batch_execute("ALTER TABLE sisy.migrations ADD COLUMN IF NOT EXISTS compatible_with int")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO sisy.migrations (version, name, compatible_with) VALUES ($1, 'future', $2)",
            &[&version, &with],
        )
        .await
        .unwrap();
}

/// Starts a guardian that must refuse to start: returns its exit code and log.
async fn refused(db: &TestDb) -> (Option<i32>, String) {
    let mut g = Guardian::start(db, "g1", "");
    let pid = g.pid().unwrap();
    wait_for("the guardian to exit", Duration::from_secs(30), || {
        process_gone(pid)
    })
    .await;
    (g.stop(), g.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_records_what_each_migration_declares() {
    let (_db, client) = migrated_db().await;
    let rows = client
        .query(
            "SELECT version, compatible_with FROM sisy.migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let declared: Vec<(i32, Option<i32>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for m in sisyphus::migrate::MIGRATIONS {
        let want = m.compatible_with().unwrap();
        assert!(
            declared.contains(&(m.version, want)),
            "{:04}: {declared:?}",
            m.version
        );
    }
    // Landed before declarations existed: each needs a sisy that knows it.
    assert!(declared.contains(&(6, None)), "{declared:?}");
    let sources = sisyphus::migrate::MIGRATIONS
        .iter()
        .find(|m| m.name == "job_sources")
        .unwrap();
    assert!(
        declared.contains(&(sources.version, Some(6))),
        "{declared:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_starts_on_a_newer_schema_declared_compatible_with_it() {
    let (db, client) = migrated_db().await;
    let known = sisyphus::migrate::latest_version();
    future_migration(&client, known + 1, Some(known)).await;
    future_migration(&client, known + 2, Some(known - 1)).await;
    let _g = Guardian::start(&db, "g1", "");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('works', 'true')",
            &[],
        )
        .await
        .unwrap();
    let id = crate::util::trigger(&client, "works").await;
    assert_eq!(
        wait_finished(&client, id, Duration::from_secs(60)).await,
        "succeeded"
    );
    // `sisy db status` of this binary says what it does not know, without failing.
    let out = sisy()
        .args(["--database-url", &db.url, "db", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{:04}_future", known + 1)) && text.contains("compatible"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_refuses_a_newer_schema_that_needs_a_newer_sisy() {
    let (db, client) = migrated_db().await;
    let known = sisyphus::migrate::latest_version();
    future_migration(&client, known + 1, Some(known)).await;
    future_migration(&client, known + 2, Some(known + 1)).await;
    let (code, log) = refused(&db).await;
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("upgrade sisy on this host") && log.contains(&format!("{}", known + 2)),
        "{log}"
    );

    // A migration that declares nothing is compatible with no older sisy.
    client
        .execute("DELETE FROM sisy.migrations WHERE version > $1", &[&known])
        .await
        .unwrap();
    future_migration(&client, known + 1, None).await;
    let (code, log) = refused(&db).await;
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("upgrade sisy on this host"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_refuses_a_schema_older_than_it_needs() {
    let (db, client) = migrated_db().await;
    let known = sisyphus::migrate::latest_version();
    client
        .execute("DELETE FROM sisy.migrations WHERE version = $1", &[&known])
        .await
        .unwrap();
    let (code, log) = refused(&db).await;
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("run `sisy db migrate`"), "{log}");
}

/// The one-shot commands judge the schema as the guardian does, instead of failing on a
/// missing column or misreading a newer schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_check_the_schema_like_the_guardian() {
    let (db, client) = migrated_db().await;
    let known = sisyphus::migrate::latest_version();
    future_migration(&client, known + 1, Some(known)).await;
    crate::cli::ok(&db, &["jobs", "list"]);
    future_migration(&client, known + 2, None).await;
    crate::cli::fails(&db, &["jobs", "list"], 1, &["upgrade sisy on this host"]);
    // `db status` still says where the database stands.
    let status = crate::cli::ok(&db, &["db", "status"]);
    assert!(status.contains("NOT compatible"), "{status}");

    let empty = crate::pg::fresh_database();
    crate::cli::fails(&empty, &["jobs", "list"], 1, &["run `sisy db migrate`"]);
}

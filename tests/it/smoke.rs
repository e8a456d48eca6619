//! Proves the test harness itself: that the shared throwaway PostgreSQL starts, hands out
//! separate databases to concurrent tests, that the URL works for psql too, and that a
//! private server survives a restart. Tests of sisyphus itself live in other modules.

use std::process::Command;

use crate::pg::{self, Server};

async fn assert_own_database(db: &pg::TestDb) {
    let client = db.connect().await;
    let row = client
        .query_one("select 1::int4, current_database()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), db.name);
}

// These two run concurrently under `cargo test`, racing for the first start and then
// creating databases at the same time.
#[tokio::test]
async fn concurrent_test_a_gets_its_own_database() {
    assert_own_database(&pg::fresh_database()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_test_b_gets_its_own_database() {
    let (first, second) = (pg::fresh_database(), pg::fresh_database());
    assert_ne!(first.name, second.name);
    assert_own_database(&first).await;
    assert_own_database(&second).await;
}

#[test]
fn url_works_for_psql() {
    let db = pg::fresh_database();
    let out = Command::new(pg::server().bin_dir.join("psql"))
        .args([&db.url, "-XAtc", "select current_database()"])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), db.name);
}

#[tokio::test]
async fn private_server_restarts_on_the_same_url() {
    let server = Server::start_private();
    let db = server.fresh_database();
    let before = db.connect().await;
    before
        .batch_execute("create table t (x int); insert into t values (7)")
        .await
        .unwrap();

    server.restart();

    assert!(
        before.simple_query("select 1").await.is_err(),
        "old session survived a restart"
    );
    let after = db.connect().await;
    let x: i32 = after
        .query_one("select x from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 7);
}

//! A database that stops answering instead of failing, or answers slowly: the guardian
//! reaches it through a proxy that black-holes every connection (no byte passes, no socket
//! is closed, the connections open at that moment stay silent for good) or holds back every
//! answer. The guardian is alive all along, so it must neither kill its own jobs (watchdog)
//! nor stay stuck on a silent connection once the database is reachable again, neither at
//! start-up nor when its host name was taken over while it was cut off.

use std::time::{Duration, Instant};

use crate::util::{
    Guardian, Proxy, migrated_db, process_gone, shared_dir, trigger, until_file, wait_finished,
    wait_for, wait_started, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_guardian_keeps_its_job_through_a_black_hole_and_works_again_after_it() {
    let (db, client) = migrated_db().await;
    let proxy = Proxy::start(crate::pg::server());
    let dir = shared_dir();
    let done = dir.path().join("done");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, max_retries) VALUES
                ('long', $1, 0), ('after', 'true', 0)",
            &[&until_file(&done)],
        )
        .await
        .unwrap();
    // One guardian, so nobody else judges it: heartbeat 1 s, lease 3 s.
    let g1 = Guardian::start(&proxy.db(&db), "g1", "");
    let long = trigger(&client, "long").await;
    let pid = wait_started(&client, long).await;

    proxy.blackhole();
    // The fault itself lasts a fixed time: well over the lease.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !process_gone(pid),
        "the guardian's own watchdog killed its job while the guardian was alive:\n{}",
        g1.log()
    );
    let healed = Instant::now();
    proxy.heal();

    // Every connection the guardian held is silent for good: it must drop them and claim
    // again through new ones.
    let after = trigger(&client, "after").await;
    assert_eq!(wait_finished(&client, after, LONG).await, "succeeded");
    let resumed = healed.elapsed();
    eprintln!("black hole healed to the next run done: {resumed:?}");
    assert!(
        resumed < Duration::from_secs(20),
        "claims resumed only {resumed:?} after the database was reachable again"
    );
    // Once idle, the dispatcher is woken by notifications: the listener must have left its
    // silent connection too (otherwise only the 30 s safety poll finds the run).
    wait_until(
        &client,
        "the guardian's heartbeat to be back",
        LONG,
        || "SELECT coalesce((SELECT lease_until > now() + interval '2 seconds' FROM sisy.hosts WHERE name = 'g1'), false)".into(),
        |ok: bool| ok,
    )
    .await;
    let woken = Instant::now();
    let again = trigger(&client, "after").await;
    assert_eq!(wait_finished(&client, again, LONG).await, "succeeded");
    eprintln!(
        "trigger to run done after the black hole: {:?}",
        woken.elapsed()
    );
    assert!(
        woken.elapsed() < Duration::from_secs(10),
        "a trigger took {:?}: notifications are not reaching the guardian",
        woken.elapsed()
    );

    std::fs::write(&done, "").unwrap();
    assert_eq!(
        wait_finished(&client, long, LONG).await,
        "succeeded",
        "{}",
        g1.log()
    );
}

/// One statement on a connection of `pool`, bounded by `limit`.
async fn ask(pool: &deadpool_postgres::Pool, limit: Duration) -> anyhow::Result<()> {
    sisyphus::db::within(pool, limit, "a test statement", async {
        let client = sisyphus::db::checkout(pool).await?;
        client.simple_query("SELECT 1").await?;
        client.release();
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_abandoned_in_the_middle_of_a_statement_never_serves_again() {
    let (db, _client) = migrated_db().await;
    let proxy = Proxy::start(crate::pg::server());
    // One connection only: a silent one put back would be the one handed out next.
    let pool = sisyphus::db::pool(&proxy.db(&db).url, 1).unwrap();
    ask(&pool, LONG).await.unwrap();
    proxy.blackhole();
    let error = ask(&pool, Duration::from_secs(1)).await.unwrap_err();
    assert!(
        sisyphus::outage::is_connection_error(&error),
        "a timeout must count as the database being out of reach: {error:#}"
    );
    proxy.heal();
    let began = Instant::now();
    ask(&pool, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the pool handed out the silent connection again: {e:#}"));
    eprintln!(
        "first statement after the black hole: {:?}",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_guardian_keeps_its_job_while_the_database_answers_slowly() {
    let (db, client) = migrated_db().await;
    let proxy = Proxy::start(crate::pg::server());
    let dir = shared_dir();
    let done = dir.path().join("done");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, max_retries) VALUES ('long', $1, 0)",
            &[&until_file(&done)],
        )
        .await
        .unwrap();
    let g1 = Guardian::start(&proxy.db(&db), "g1", "");
    let long = trigger(&client, "long").await;
    let pid = wait_started(&client, long).await;
    let renewed = "SELECT last_seen FROM sisy.hosts WHERE name = 'g1'";
    let before: chrono::DateTime<chrono::Utc> =
        client.query_one(renewed, &[]).await.unwrap().get(0);

    // Every beat now succeeds, but 1.5 s after it was sent (lease 3 s, heartbeat 1 s): the
    // last success is always about to be 3 s old when the next answer arrives.
    proxy.lag(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !process_gone(pid),
        "the guardian's own watchdog killed its job while its beats succeeded slowly:\n{}",
        g1.log()
    );
    let during: chrono::DateTime<chrono::Utc> =
        client.query_one(renewed, &[]).await.unwrap().get(0);
    assert!(
        during > before,
        "no beat succeeded while the database was slow"
    );
    proxy.lag(Duration::ZERO);

    std::fs::write(&done, "").unwrap();
    assert_eq!(
        wait_finished(&client, long, LONG).await,
        "succeeded",
        "{}",
        g1.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_whose_host_name_was_taken_over_during_a_partition_kills_its_jobs_at_once() {
    let (db, client) = migrated_db().await;
    let proxy = Proxy::start(crate::pg::server());
    // Ignores SIGTERM and has a long kill_grace: only a kill ends it soon.
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, kill_grace, max_retries) VALUES
                ('stubborn', 'trap \"\" TERM; while :; do sleep 0.2; done', '10 minutes', 0)",
        )
        .await
        .unwrap();
    let mut first = Guardian::start(&proxy.db(&db), "twin", "");
    let run = trigger(&client, "stubborn").await;
    let pid = wait_started(&client, run).await;
    // Cut off (alive, so its watchdog keeps the job), its lease lapses...
    proxy.blackhole();
    wait_until(
        &client,
        "the cut-off guardian's lease to lapse",
        LONG,
        || "SELECT coalesce((SELECT lease_until < now() FROM sisy.hosts WHERE name = 'twin'), false)".into(),
        |lapsed: bool| lapsed,
    )
    .await;
    // ...a second process takes the name, which declares the run lost (it may be retried)...
    let second = Guardian::start(&db, "twin", "");
    wait_for("the second to start", LONG, || {
        second.log().contains("guardian started")
    })
    .await;
    // ...and once the first hears from the database again, the job is no longer its to run.
    proxy.heal();
    wait_for("the first to see the takeover", LONG, || {
        first.log().contains("took over its host name")
    })
    .await;
    // At once, not after its kill_grace nor the shutdown's wait for stopped jobs (60 s): the
    // run may already be retried elsewhere. 20 s is room for a loaded machine.
    wait_for(
        "the job of the process that lost its host name to be killed",
        Duration::from_secs(20),
        || process_gone(pid),
    )
    .await;
    assert!(first.exit_within(LONG).await.is_some(), "{}", first.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_leaves_a_connection_that_fell_silent_and_starts_once_the_database_is_back() {
    let (db, client) = migrated_db().await;
    let locker = db.connect().await;
    let proxy = Proxy::start(crate::pg::server());
    // The host row is locked by a transaction of the test: the guardian's registration
    // waits on it, in the middle of a statement on its start-up connection...
    client
        .batch_execute(
            "INSERT INTO sisy.hosts (name, lease_until, started_at)
             VALUES ('silent', now() - interval '1 hour', now() - interval '1 hour')",
        )
        .await
        .unwrap();
    locker
        .batch_execute("BEGIN; SELECT 1 FROM sisy.hosts WHERE name = 'silent' FOR UPDATE")
        .await
        .unwrap();
    let g = Guardian::start(&proxy.db(&db), "silent", "");
    wait_until(
        &client,
        "the guardian's registration to wait on the row lock",
        LONG,
        || "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO sisy.hosts%'".into(),
        |waiting: bool| waiting,
    )
    .await;
    // ...when that connection falls silent for good. The database is soon back for new
    // connections: start-up must give the silent one up and start on a new one.
    proxy.blackhole();
    locker.batch_execute("ROLLBACK").await.unwrap();
    proxy.heal();
    wait_for("the guardian to start on a new connection", LONG, || {
        g.log().contains("guardian started")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_session_paused_inside_a_transaction_gives_its_row_locks_up() {
    let (db, client) = migrated_db().await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('locked', 'true')",
            &[],
        )
        .await
        .unwrap();
    // A guardian's pool, its session stopped between two statements of a transaction (as a
    // guardian paused with SIGSTOP would leave it): the lock must not outlive the limit.
    let limit = Duration::from_secs(2);
    let pool = sisyphus::db::pool_with_lock_limit(&db.url, 1, limit).unwrap();
    let mut paused = sisyphus::db::checkout(&pool).await.unwrap();
    let tx = paused.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM sisy.jobs WHERE name = 'locked' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let began = Instant::now();
    wait_until(
        &client,
        "the paused session's lock to be given up",
        LONG,
        || {
            "SELECT count(*) FROM (SELECT 1 FROM sisy.jobs WHERE name = 'locked' FOR UPDATE SKIP LOCKED) l"
                .into()
        },
        |n: i64| n == 1,
    )
    .await;
    let held = began.elapsed();
    eprintln!("lock held by the paused session for {held:?} (limit {limit:?})");
    assert!(
        held >= limit - Duration::from_millis(200),
        "the lock went too early: {held:?}"
    );
    drop(tx);
}

//! Guardians through a real PgBouncer in transaction pooling mode (`listen = false`,
//! `prepared_statements = false`): statements without names, no session state, and
//! triggered runs and kill requests found by the dispatcher's poll every `poll_interval`.
//! Each test has its own PgBouncer (see `bouncer`) in front of the shared cluster; the test
//! itself and the `sisy` CLI talk to the database directly.

use std::time::{Duration, Instant};

use crate::bouncer::Bouncer;
use crate::util::{
    Guardian, migrated_db, process_gone, shared_dir, sisy, trigger, until_file, wait_finished,
    wait_for, wait_started, wait_until,
};

/// The pooled layout's guardian settings, with a short poll.
const POOLED: &str = "listen = false\nprepared_statements = false\npoll_interval = \"500ms\"";
const POLL: Duration = Duration::from_millis(500);
/// Room for a loaded test machine (two cores shared with other tests) above the poll.
const SLACK: Duration = Duration::from_millis(1500);
const LONG: Duration = Duration::from_secs(60);

/// Waits until `n` hosts hold a lease.
async fn registered(client: &tokio_postgres::Client, n: i64) {
    wait_until(
        client,
        "the guardians registered",
        LONG,
        || "SELECT count(*) FROM sisy.hosts WHERE lease_until > now()".into(),
        |v: i64| v >= n,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_jobs_run_once_each_through_pgbouncer_without_listening() {
    let (db, client) = migrated_db().await;
    let bouncer = Bouncer::start_shared();
    let pooled = bouncer.db(&db);
    let _g1 = Guardian::start(&pooled, "g1", POOLED);
    let _g2 = Guardian::start(&pooled, "g2", POOLED);
    registered(&client, 2).await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, schedule) VALUES ('tick', 'echo hi', '* * * * * *')",
            &[],
        )
        .await
        .unwrap();
    wait_until(
        &client,
        "6 succeeded occurrences",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE state = 'succeeded'".into(),
        |n: i64| n >= 6,
    )
    .await;
    let rows = client
        .query(
            "SELECT scheduled_for, count(*), array_agg(state), array_agg(output) FROM sisy.runs
              GROUP BY scheduled_for ORDER BY scheduled_for",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        let (count, states): (i64, Vec<String>) = (row.get(1), row.get(2));
        assert_eq!(count, 1, "an occurrence ran more than once: {states:?}");
        assert!(
            matches!(states[0].as_str(), "succeeded" | "running" | "pending"),
            "{states:?}"
        );
        if states[0] == "succeeded" {
            let output: Vec<Option<String>> = row.get(3);
            assert_eq!(output[0].as_deref(), Some("hi\n"));
        }
    }
    // No session of this database listens: nothing waits on a notification.
    let listening: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listening, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_starts_and_a_kill_stops_within_a_poll_through_pgbouncer() {
    let (db, client) = migrated_db().await;
    let bouncer = Bouncer::start_shared();
    let _g = Guardian::start(&bouncer.db(&db), "g1", POOLED);
    registered(&client, 1).await;
    client
        .batch_execute("INSERT INTO sisy.jobs (name, command) VALUES ('long', 'sleep 600')")
        .await
        .unwrap();
    // Idle for a few polls first: the trigger is found by a poll, not by a pass in progress.
    wait_until(
        &client,
        "a few heartbeats",
        LONG,
        || {
            "SELECT count(*) FROM sisy.hosts WHERE last_seen > started_at + interval '2 seconds'"
                .into()
        },
        |n: i64| n >= 1,
    )
    .await;
    let id = trigger(&client, "long").await;
    let pid = wait_started(&client, id).await;
    let waited: f64 = client
        .query_one(
            "SELECT extract(epoch FROM started_at - created_at)::float8 FROM sisy.runs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!("trigger to start: {waited:.3} s (poll_interval {POLL:?})");
    assert!(
        waited <= (POLL + SLACK).as_secs_f64(),
        "the trigger took {waited} s to start its run (poll_interval {POLL:?})"
    );

    // `sisy runs kill` talks to the database directly; the guardian hears of it by its poll.
    let out = sisy()
        .args(["--database-url", &db.url, "runs", "kill", &id.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asked = Instant::now();
    wait_for("the killed process to end", LONG, || process_gone(pid)).await;
    let took = asked.elapsed();
    eprintln!("kill to process gone: {took:?} (poll_interval {POLL:?})");
    assert!(
        took <= POLL + SLACK,
        "the kill took {took:?} to stop the process (poll_interval {POLL:?})"
    );
    assert_eq!(wait_finished(&client, id, LONG).await, "killed");

    // `sisy.kill()` from SQL, the same way.
    let id = trigger(&client, "long").await;
    let pid = wait_started(&client, id).await;
    client
        .execute("SELECT sisy.kill($1)", &[&id])
        .await
        .unwrap();
    wait_for("the killed process to end", POLL + SLACK, || {
        process_gone(pid)
    })
    .await;
    assert_eq!(wait_finished(&client, id, LONG).await, "killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_pooled_guardian_claims_nothing_and_a_dead_one_s_runs_are_lost() {
    let (db, client) = migrated_db().await;
    let bouncer = Bouncer::start_shared();
    let pooled = bouncer.db(&db);
    let mut g1 = Guardian::start(&pooled, "g1", POOLED);
    registered(&client, 1).await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, overlap) VALUES
                ('long', 'sleep 600', 'forbid'), ('quick', 'true', 'allow')",
        )
        .await
        .unwrap();
    let long = trigger(&client, "long").await;
    wait_started(&client, long).await;
    let _g2 = Guardian::start(&pooled, "g2", POOLED);
    registered(&client, 2).await;

    // Drained: g2 claims nothing new; g1 takes the triggered runs.
    client
        .execute("SELECT sisy.drain('g2')", &[])
        .await
        .unwrap();
    let mut quick = Vec::new();
    for _ in 0..5 {
        quick.push(trigger(&client, "quick").await);
    }
    for id in &quick {
        assert_eq!(wait_finished(&client, *id, LONG).await, "succeeded");
    }
    let hosts: Vec<String> = client
        .query_one(
            "SELECT array_agg(DISTINCT host) FROM sisy.runs WHERE job_name = 'quick'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hosts, ["g1"]);
    client
        .execute("SELECT sisy.undrain('g2')", &[])
        .await
        .unwrap();

    // g1 dies: its lease runs out and g2, through the pooler too, declares its run lost.
    g1.kill();
    assert_eq!(wait_finished(&client, long, LONG).await, "lost");
    let error: String = client
        .query_one("SELECT error FROM sisy.runs WHERE id = $1", &[&long])
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("declared lost by g2"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbouncer_outage_during_a_run_loses_nothing_and_duplicates_nothing() {
    let (db, client) = migrated_db().await;
    let bouncer = Bouncer::start_shared();
    let mut g = Guardian::start(&bouncer.db(&db), "g1", POOLED);
    registered(&client, 1).await;
    let dir = shared_dir();
    let flag = dir.path().join("go");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('wait', $1, 'allow')",
            &[&format!("{}; echo done", until_file(&flag))],
        )
        .await
        .unwrap();
    let id = trigger(&client, "wait").await;
    let pid = wait_started(&client, id).await;

    // The pooler goes away; the job ends while it is gone.
    bouncer.stop();
    std::fs::write(&flag, "").unwrap();
    wait_for("the job to end", LONG, || process_gone(pid)).await;
    assert!(g.pid().is_some_and(|p| !process_gone(p)));
    bouncer.start();

    assert_eq!(wait_finished(&client, id, LONG).await, "succeeded");
    let (runs, output): (i64, Option<String>) = {
        let row = client
            .query_one(
                "SELECT count(*), max(output) FROM sisy.runs WHERE job_name = 'wait'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((runs, output.as_deref()), (1, Some("done\n")));
    // Still alive and working: a new trigger runs.
    let again = trigger(&client, "wait").await;
    assert_eq!(wait_finished(&client, again, LONG).await, "succeeded");
    assert!(
        g.exit_within(Duration::ZERO).await.is_none(),
        "the guardian exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_runs_each_triggered_run_exactly_once() {
    let (db, client) = migrated_db().await;
    let bouncer = Bouncer::start_shared();
    // One guardian direct with LISTEN and prepared statements, one through the pooler.
    let _direct = Guardian::start(&db, "direct", "capacity = 4");
    let _pooled = Guardian::start(
        &bouncer.db(&db),
        "pooled",
        &format!("{POOLED}\ncapacity = 4"),
    );
    registered(&client, 2).await;
    client
        .batch_execute("INSERT INTO sisy.jobs (name, command, overlap) VALUES ('one', 'sleep 0.3; echo $SISY_RUN_ID', 'allow')")
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(trigger(&client, "one").await);
    }
    wait_until(
        &client,
        "every triggered run to finish",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE state NOT IN ('pending', 'running')".into(),
        |n: i64| n >= 60,
    )
    .await;
    let rows = client
        .query(
            "SELECT id, state, output, host FROM sisy.runs ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 60);
    let mut hosts = std::collections::BTreeSet::new();
    for row in &rows {
        let (id, state, output, host): (i64, String, Option<String>, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(state, "succeeded", "run {id}");
        // Its process ran once: one line, its own id.
        assert_eq!(
            output.as_deref(),
            Some(format!("{id}\n").as_str()),
            "run {id}"
        );
        hosts.extend(host);
    }
    assert!(
        hosts.contains("pooled"),
        "the pooled guardian ran nothing: {hosts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_fail_through_transaction_pooling() {
    // The failure mode `prepared_statements = false` avoids: a statement prepared on one
    // server connection is executed on another.
    let (db, client) = migrated_db().await;
    // Work to do, so that the guardian's statements spread over several server connections
    // (an idle guardian's few statements may all find the same one).
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, schedule) VALUES ('tick', 'true', '* * * * * *')",
        )
        .await
        .unwrap();
    let bouncer = Bouncer::start_shared();
    let g = Guardian::start(&bouncer.db(&db), "g1", "listen = false");
    wait_for("the guardian to fail on a prepared statement", LONG, || {
        let log = g.log();
        log.contains("prepared statement") && log.contains("does not exist")
    })
    .await;
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_through_pgbouncer_apply_each_migration_once() {
    let db = tokio::task::block_in_place(crate::pg::fresh_database);
    let bouncer = Bouncer::start_shared();
    let pooled = bouncer.db(&db);
    let migrators: Vec<_> = (0..3)
        .map(|_| {
            sisy()
                .args(["--database-url", &pooled.url, "db", "migrate"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for m in migrators {
        let out = m.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "migrate through PgBouncer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let client = db.connect().await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM sisy.migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known: Vec<i32> = sisyphus::migrate::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, known);
    // Once more: nothing to do, said so.
    let out = sisy()
        .args(["--database-url", &pooled.url, "db", "migrate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_guardian_opens_at_most_pool_size_plus_one_connections() {
    let (db, client) = migrated_db().await;
    let bouncer = Bouncer::start_shared();
    let _g = Guardian::start(
        &bouncer.db(&db),
        "g1",
        &format!("{POOLED}\npool_size = 2\ncapacity = 8"),
    );
    registered(&client, 1).await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('quick', 'sleep 0.2', 'allow')",
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..16 {
        ids.push(trigger(&client, "quick").await);
    }
    // Busy (claims, admission, results, heartbeats at once): the most it ever holds.
    let mut most = 0;
    for id in &ids {
        most = most.max(bouncer.clients_of(&db.name).await);
        assert_eq!(wait_finished(&client, *id, LONG).await, "succeeded");
    }
    most = most.max(bouncer.clients_of(&db.name).await);
    eprintln!("{most} client connections at most");
    // pool_size for the services, one for the heartbeat, none for LISTEN.
    assert!((1..=3).contains(&most), "{most} client connections");
}

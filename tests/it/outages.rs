//! The database going away under a running fleet: a fast restart, a minute of downtime with a
//! guardian restarted in the middle of it, and a failover to a promoted streaming replica.
//! Each test has a PostgreSQL server of its own (the shared one is never stopped), real
//! guardians and jobs that end when the test says so (a flag file), not after a guess.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio_postgres::Client;

use crate::pg::{Server, TestDb};
use crate::util::{
    Guardian, migrated_db_on, process_gone, shared_dir, trigger, until_file, wait_finished,
    wait_for, wait_started, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// A job command that waits for `flag` to exist, then prints `word`.
fn until_flag(flag: &Path, word: &str) -> String {
    format!("{}; echo {word}", until_file(flag))
}

async fn state_and_output(client: &Client, id: i64) -> (String, String) {
    let row = client
        .query_one(
            "SELECT state, coalesce(output, '') FROM sisy.runs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// How many times `needle` occurs in the guardian's log.
fn count_in_log(g: &Guardian, needle: &str) -> usize {
    g.log().matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_nothing_and_the_fleet_reconnects_by_itself() {
    let server = Server::start_private();
    let (db, client) = migrated_db_on(&server).await;
    let g1 = Guardian::start(&db, "g1", "");
    let g2 = Guardian::start(&db, "g2", "");
    let dir = shared_dir();
    let flag = dir.path().join("go");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('across', $1), ('after', 'echo after')",
            &[&until_flag(&flag, "across")],
        )
        .await
        .unwrap();
    let id = trigger(&client, "across").await;
    let pid = wait_started(&client, id).await;

    tokio::task::block_in_place(|| server.restart());
    std::fs::write(&flag, "").unwrap();
    let client = db.connect().await;
    assert_eq!(wait_finished(&client, id, LONG).await, "succeeded");
    assert_eq!(
        state_and_output(&client, id).await.1.trim(),
        "across",
        "the job ran on through the restart"
    );
    assert!(process_gone(pid));
    // The listeners are back: a new run starts through NOTIFY, not the 30 s safety poll.
    wait_until(
        &client,
        "both guardians to LISTEN again",
        LONG,
        || {
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE 'LISTEN%'"
                .into()
        },
        |n: i64| n >= 2,
    )
    .await;
    let asked = Instant::now();
    let after = trigger(&client, "after").await;
    assert_eq!(wait_finished(&client, after, LONG).await, "succeeded");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "a trigger after the restart took {:?}",
        asked.elapsed()
    );
    let lost: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE state <> 'succeeded'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(lost, 0, "a run did not survive the restart");
    for g in [&g1, &g2] {
        assert!(
            count_in_log(g, "database unreachable") <= 1,
            "logged more than once:\n{}",
            g.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_for_a_minute_loses_no_result_even_across_a_guardian_restart() {
    let outage = Duration::from_secs(
        std::env::var("SISY_TEST_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let server = Server::start_private();
    let (db, client) = migrated_db_on(&server).await;
    // Each guardian serves a pool of its own, so the test knows which one runs what.
    let mut g1 = Guardian::start(&db, "g1", "pools = [\"p1\"]");
    let g2 = Guardian::start(&db, "g2", "pools = [\"p2\"]");
    let dir = shared_dir();
    let (flag_a, flag_b) = (dir.path().join("a"), dir.path().join("b"));
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, pool) VALUES ('ends-during', $1, 'p1'), ('ends-after', $2, 'p2')",
            &[&until_flag(&flag_a, "a"), &until_flag(&flag_b, "b")],
        )
        .await
        .unwrap();
    let (a, b) = (
        trigger(&client, "ends-during").await,
        trigger(&client, "ends-after").await,
    );
    wait_started(&client, a).await;
    let pid_b = wait_started(&client, b).await;

    let down_at = Instant::now();
    tokio::task::block_in_place(|| server.stop());
    // Run a ends while the database is away: its result goes to g1's spool.
    std::fs::write(&flag_a, "").unwrap();
    let spooled = g1.dir.path().join(format!("spool/{a}.json"));
    wait_for("run a's result in g1's spool", LONG, || spooled.exists()).await;
    // g1 is killed and restarted during the outage: only the spool remembers run a.
    g1.restart();
    wait_for("the restarted g1 to wait for the database", LONG, || {
        count_in_log(&g1, "database unreachable") >= 2
    })
    .await;
    tokio::time::sleep_until((down_at + outage).into()).await;
    assert!(!process_gone(pid_b), "run b was stopped by the outage");
    tokio::task::block_in_place(|| server.start());
    eprintln!("database was down for {:?}", down_at.elapsed());

    let client = db.connect().await;
    assert_eq!(wait_finished(&client, a, LONG).await, "succeeded");
    assert_eq!(state_and_output(&client, a).await.1.trim(), "a");
    wait_for("g1's spool to empty", LONG, || !spooled.exists()).await;
    std::fs::write(&flag_b, "").unwrap();
    assert_eq!(wait_finished(&client, b, LONG).await, "succeeded");
    assert_eq!(state_and_output(&client, b).await.1.trim(), "b");
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE state = 'lost') FROM sisy.runs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (2, 0),
        "no run may be lost or retried after an outage longer than the lease"
    );
    // g2 lived through the whole outage: one warning, one all-clear.
    wait_for("g2 to log the database's return", LONG, || {
        count_in_log(&g2, "database reachable again") >= 1
    })
    .await;
    assert_eq!(count_in_log(&g2, "database unreachable"), 1, "{}", g2.log());
    assert_eq!(
        count_in_log(&g2, "database reachable again"),
        1,
        "{}",
        g2.log()
    );
    g2.signal(Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_fails_over_to_a_promoted_replica_without_a_restart() {
    let primary = Server::start_private();
    let (db, client) = migrated_db_on(&primary).await;
    let replica = tokio::task::block_in_place(|| primary.start_replica());
    // One URL for both servers: whichever accepts writes is the database.
    let fleet_db = TestDb {
        name: db.name.clone(),
        url: format!(
            "host={},{} port={},{} user=postgres dbname={} target_session_attrs=read-write",
            primary.socket_dir.display(),
            replica.socket_dir.display(),
            primary.port,
            replica.port,
            db.name
        ),
    };
    let guardians = [
        Guardian::start(&fleet_db, "g1", ""),
        Guardian::start(&fleet_db, "g2", ""),
    ];
    let pids: Vec<Option<i32>> = guardians.iter().map(Guardian::pid).collect();
    let dir = shared_dir();
    let flag = dir.path().join("go");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, schedule) VALUES ('tick', 'echo tick', '* * * * * *'), ('across', $1, NULL)",
            &[&until_flag(&flag, "across")],
        )
        .await
        .unwrap();
    let across = trigger(&client, "across").await;
    wait_started(&client, across).await;
    wait_until(
        &client,
        "ticks on the primary",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE job_name = 'tick' AND state = 'succeeded'".into(),
        |n: i64| n >= 3,
    )
    .await;
    wait_for("the replica to catch up", LONG, || {
        tokio::task::block_in_place(|| replica.caught_up_with(&primary))
    })
    .await;

    tokio::task::block_in_place(|| {
        replica.promote();
        primary.stop();
    });
    let promoted_at = Instant::now();
    let client = TestDb {
        name: db.name.clone(),
        url: replica.url_for(&db.name),
    }
    .connect()
    .await;
    // The run that was running through the failover reports to the new primary.
    std::fs::write(&flag, "").unwrap();
    assert_eq!(wait_finished(&client, across, LONG).await, "succeeded");
    // The schedule goes on there.
    let now: chrono::DateTime<chrono::Utc> =
        client.query_one("SELECT now()", &[]).await.unwrap().get(0);
    wait_until(
        &client,
        "ticks on the promoted replica",
        LONG,
        || {
            format!(
                "SELECT count(*) FROM sisy.runs WHERE job_name = 'tick' AND state = 'succeeded' \
                 AND started_at > '{}'",
                now.to_rfc3339()
            )
        },
        |n: i64| n >= 3,
    )
    .await;
    eprintln!(
        "failover: three ticks on the promoted replica {:?} after the promotion",
        promoted_at.elapsed()
    );
    // Nothing stays running: runs whose end went to the old primary after the promotion are
    // given up by the heartbeat (their guardian no longer knows them).
    client
        .execute("SELECT sisy.suspend('tick')", &[])
        .await
        .unwrap();
    wait_until(
        &client,
        "every run to reach a final state",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE state IN ('pending', 'running')".into(),
        |n: i64| n == 0,
    )
    .await;
    let now_pids: Vec<Option<i32>> = guardians.iter().map(Guardian::pid).collect();
    assert_eq!(pids, now_pids);
    for pid in pids.into_iter().flatten() {
        assert!(
            !process_gone(pid),
            "guardian {pid} did not survive the failover"
        );
    }
    let hosts: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.hosts WHERE lease_until > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hosts, 2, "both guardians heartbeat to the new primary");
}

//! No herd: the database work per run does not grow with the guardians of a pool. One
//! guardian per pool (the holder of the lease `pool:<name>`) materialises its occurrences and
//! is the one a new run wakes; the others wake for their own runs only. These tests count the
//! guardians' statements per run with `pg_stat_statements` at 2 and 8 guardians, and check
//! the hand-overs: a leader that dies, stops, drains or is full.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::pg;
use crate::util::{
    Guardian, Listener, fleet, migrated_db, migrated_db_on, shared_dir, until_file, wait_finished,
    wait_started, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// A server of the tests' own with `pg_stat_statements` (not in the shared one's settings).
fn server_with_statements() -> pg::Server {
    pg::Server::start_private_with(&["shared_preload_libraries=pg_stat_statements"])
}

/// The guardians' statements since the last reset, but their heartbeats (a fleet's cost per
/// interval, not per run): every guardian statement starts with its file's comment, the
/// test's own do not.
async fn guardian_statements(client: &Client) -> (i64, f64) {
    let row = client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::int8, coalesce(sum(total_exec_time), 0)::float8
               FROM pg_stat_statements
              WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND query LIKE '--%'
                AND query NOT LIKE '-- One statement per tick renews this host%'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Until every guardian has beaten once after registering (its leases are settled).
async fn settled(client: &Client, n: usize) {
    let want = n as i64;
    wait_until(
        client,
        "every guardian's first heartbeat",
        LONG,
        || "SELECT count(*) FROM sisy.hosts WHERE last_seen > started_at".into(),
        |v: i64| v >= want,
    )
    .await;
}

/// Statements per run of `n` guardians of one pool: a job every second for 6 runs, and, with
/// LISTEN, 20 triggered runs (one every 100 ms).
async fn per_run(server: &pg::Server, n: usize, listen: bool) -> (f64, f64) {
    let (db, client) = migrated_db_on(server).await;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .unwrap();
    let mode = if listen {
        "capacity = 4"
    } else {
        // No poll in the window: only the wake-ups at due instants are left to count.
        "capacity = 4\nlisten = false\npoll_interval = \"1h\""
    };
    let mut guardians = fleet(&db, &client, n, mode).await;
    settled(&client, n).await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('hop', 'true');
             SELECT pg_stat_statements_reset();
             INSERT INTO sisy.jobs (name, command, schedule) VALUES ('tick', 'true', '* * * * * *');",
        )
        .await
        .unwrap();
    if listen {
        for _ in 0..20 {
            client
                .execute("SELECT sisy.trigger('hop')", &[])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let want = if listen { 26 } else { 6 };
    let runs: i64 = wait_until(
        &client,
        "the runs to finish",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE state = 'succeeded'".into(),
        |v: i64| v >= want,
    )
    .await;
    let (calls, ms) = guardian_statements(&client).await;
    for g in &mut guardians {
        g.stop();
    }
    let finished: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE state = 'succeeded'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let runs = runs.max(finished) as f64;
    (calls as f64 / runs, ms / runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_work_per_run_does_not_grow_with_the_guardians_of_a_pool() {
    let server = tokio::task::block_in_place(server_with_statements);
    for listen in [true, false] {
        let (two, two_ms) = per_run(&server, 2, listen).await;
        let (eight, eight_ms) = per_run(&server, 8, listen).await;
        println!(
            "listen = {listen}: statements per run {two:.1} with 2 guardians, {eight:.1} with 8 \
             ({:.2}x); database ms per run {two_ms:.2} / {eight_ms:.2}",
            eight / two
        );
        // Before: every guardian ticked and claimed for every run (about 4x from 2 to 8).
        assert!(
            eight <= two * 1.5 + 1.0,
            "listen = {listen}: {eight:.1} statements per run with 8 guardians against {two:.1} with 2"
        );
    }
}

/// The position in `fleet`'s list of the guardian named `name` (g1, g2, ...).
fn index(name: &str) -> usize {
    name.trim_start_matches('g').parse::<usize>().unwrap() - 1
}

/// The pool's lease holder once `ok` holds for it ("" while nobody holds it).
async fn holder_when(client: &Client, what: &str, ok: impl Fn(&str) -> bool) -> String {
    wait_until(
        client,
        what,
        LONG,
        || {
            "SELECT coalesce((SELECT holder FROM sisy.leases
                               WHERE name = 'pool:default' AND until > now()
                                 AND until < 'infinity'), '')"
                .into()
        },
        |h: String| ok(&h),
    )
    .await
}

/// The pool's lease holder, once there is one.
async fn leader(client: &Client) -> String {
    holder_when(client, "a holder of the pool's lease", |h| !h.is_empty()).await
}

/// Until `n` runs of the per-second job `tick` scheduled after `since` (database time)
/// have succeeded, within `limit`.
async fn ticks_after(client: &Client, what: &str, since: &str, n: i64, limit: Duration) {
    let _: i64 = wait_until(
        client,
        what,
        limit,
        || {
            format!(
                "SELECT count(*) FROM sisy.runs
                  WHERE job_name = 'tick' AND scheduled_for > '{since}' AND state = 'succeeded'"
            )
        },
        |v: i64| v >= n,
    )
    .await;
}

async fn db_now(client: &Client) -> String {
    client
        .query_one("SELECT now()::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_goes_on_when_the_pools_lease_holder_dies() {
    let (db, client) = migrated_db().await;
    let mut guardians = fleet(&db, &client, 3, "listen = false\npoll_interval = \"1h\"").await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, schedule, ttl) VALUES ('tick', 'true', '* * * * * *', '1 hour')",
        )
        .await
        .unwrap();
    let first = leader(&client).await;
    guardians[index(&first)].kill();
    let killed_at = db_now(&client).await;
    let began = Instant::now();
    // Its lease passes within a lease (3 s in tests), then another guardian takes it at its
    // next beat; the occurrences due meanwhile run late, not never.
    let next = holder_when(&client, "another holder of the pool's lease", |h| {
        !h.is_empty() && h != first
    })
    .await;
    ticks_after(
        &client,
        "three runs after the holder died",
        &killed_at,
        3,
        LONG,
    )
    .await;
    println!(
        "pool lease: {first} killed, {next} took over; runs again {:?} later",
        began.elapsed()
    );
    // Each occurrence once, none lost in the hand-over.
    let duplicates: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT scheduled_for FROM sisy.runs GROUP BY scheduled_for
                                   HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(duplicates, 0);
    let gaps: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT scheduled_for, lead(scheduled_for) OVER (ORDER BY scheduled_for) AS n
                                     FROM sisy.runs WHERE reason = 'schedule') s
              WHERE n - scheduled_for > interval '1 second'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gaps, 0, "an occurrence went missing in the hand-over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_or_draining_lease_holder_hands_its_pool_over_at_once() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let flag = dir.path().join("go");
    let mut guardians = fleet(
        &db,
        &client,
        2,
        "listen = false\npoll_interval = \"1h\"\nshutdown_grace = \"60s\"",
    )
    .await;
    client
        .batch_execute(&format!(
            "INSERT INTO sisy.jobs (name, command, target) VALUES ('long', '{}', 'all');
             INSERT INTO sisy.jobs (name, command, schedule, ttl) VALUES ('tick', 'true', '* * * * * *', '1 hour');",
            until_file(&flag)
        ))
        .await
        .unwrap();
    // Drain: the holder gives the pool up at its next beat, the other takes it.
    let first = leader(&client).await;
    client
        .execute("SELECT sisy.drain($1)", &[&first])
        .await
        .unwrap();
    let since = db_now(&client).await;
    let second = holder_when(
        &client,
        "the other guardian to hold the pool's lease",
        |h| !h.is_empty() && h != first,
    )
    .await;
    ticks_after(&client, "runs after the drain", &since, 2, LONG).await;
    println!("drained {first}: {second} holds the pool");
    // A clean stop with a run still going (its grace is 60 s): the pool is handed over at
    // once, not when the stop ends.
    client
        .execute("SELECT sisy.undrain($1)", &[&first])
        .await
        .unwrap();
    let holder = leader(&client).await;
    client
        .execute("SELECT sisy.trigger('long')", &[])
        .await
        .unwrap();
    // One run per host (`all`): the holder has one to wait for when it stops.
    let _: i64 = wait_until(
        &client,
        "the long runs to start",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE job_name = 'long' AND state = 'running'".into(),
        |n: i64| n == 2,
    )
    .await;
    // SIGTERM without waiting: the guardian stays in its grace while the long run goes on.
    let pid = guardians[index(&holder)].pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let since = db_now(&client).await;
    ticks_after(
        &client,
        "scheduled runs during the stopping holder's grace",
        &since,
        3,
        Duration::from_secs(20),
    )
    .await;
    // The stopping holder is still there (its run goes on) and no longer holds the pool.
    let still: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM sisy.runs WHERE job_name = 'long' AND host = $1 AND state = 'running')",
            &[&holder],
        )
        .await
        .unwrap()
        .get(0);
    assert!(still, "the stopping holder's run ended early");
    assert_ne!(leader(&client).await, holder);
    std::fs::write(&flag, "").unwrap();
    for g in &mut guardians {
        g.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lease_holder_asks_the_others_of_its_pool_for_help() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let flag = dir.path().join("go");
    // LISTEN: a new run wakes the holder only; with capacity 1 it is full after one run.
    // The holder starts alone and takes the long run; the other joins once it is full.
    let mut guardians = vec![Guardian::start(&db, "g1", "capacity = 1")];
    client
        .batch_execute(&format!(
            "INSERT INTO sisy.jobs (name, command) VALUES ('long', '{}'), ('quick', 'true');",
            until_file(&flag)
        ))
        .await
        .unwrap();
    assert_eq!(leader(&client).await, "g1");
    client
        .execute("SELECT sisy.trigger('long')", &[])
        .await
        .unwrap();
    let _: i64 = wait_until(
        &client,
        "the long run to start on g1",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE job_name = 'long' AND state = 'running' AND host = 'g1'".into(),
        |n: i64| n == 1,
    )
    .await;
    guardians.push(Guardian::start(&db, "g2", "capacity = 1"));
    // Settled: both listen, and g2 has beaten (it knows it holds no lease).
    let _: i64 = wait_until(
        &client,
        "g2 to listen and beat",
        LONG,
        || {
            "SELECT (SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND query LIKE 'LISTEN%')
                  + (SELECT count(*) FROM sisy.hosts WHERE name = 'g2' AND last_seen > started_at)"
                .into()
        },
        |n: i64| n == 3,
    )
    .await;
    let holder = leader(&client).await;
    assert_eq!(holder, "g1");
    for _ in 0..3 {
        let began = Instant::now();
        client
            .execute("SELECT sisy.trigger('quick')", &[])
            .await
            .unwrap();
        // Not at the others' safety poll (30 s): the holder asks them at once.
        let _: i64 = wait_until(
            &client,
            "the quick run to end on the other guardian",
            Duration::from_secs(10),
            || "SELECT count(*) FROM sisy.runs WHERE job_name = 'quick' AND state IN ('pending', 'running')".into(),
            |n: i64| n == 0,
        )
        .await;
        println!("quick run done {:?} after its trigger", began.elapsed());
    }
    let elsewhere: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE job_name = 'quick' AND state = 'succeeded' AND host <> $1",
            &[&holder],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(elsewhere, 3);
    std::fs::write(&flag, "").unwrap();
    for g in &mut guardians {
        g.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pool_lease_row_does_not_stop_the_pool() {
    let (db, client) = migrated_db().await;
    let mut guardians = fleet(&db, &client, 2, "listen = false\npoll_interval = \"1h\"").await;
    client
        .batch_execute(
            "INSERT INTO sisy.hosts (name, pools, lease_until, started_at)
             VALUES ('intruder', '{other}', now() + interval '1 hour', now());
             INSERT INTO sisy.jobs (name, command, schedule, ttl) VALUES ('tick', 'true', '* * * * * *', '1 hour');",
        )
        .await
        .unwrap();
    leader(&client).await;
    // Scheduling under way before any row is damaged: without LISTEN (and a poll of an hour)
    // the new job is first seen at a guardian's safety poll, up to 30 s after its insert,
    // which is no lease row's doing.
    ticks_after(
        &client,
        "scheduled runs before the lease row is damaged",
        "-infinity",
        1,
        LONG,
    )
    .await;
    for row in [
        // A live host that does not serve the pool, for ever.
        "'intruder', 'infinity'",
        // Nobody, for ever; a holder and no end; nothing at all.
        "NULL, 'infinity'",
        "'g1', NULL",
        "NULL, NULL",
        // A host with no row.
        "'ghost', now() + interval '1 hour'",
    ] {
        client
            .batch_execute(&format!(
                "DELETE FROM sisy.leases WHERE name = 'pool:default';
                 INSERT INTO sisy.leases VALUES ('pool:default', {row});"
            ))
            .await
            .unwrap();
        let since = db_now(&client).await;
        let what = format!("scheduled runs with the lease row ({row})");
        ticks_after(&client, &what, &since, 2, Duration::from_secs(20)).await;
        // And a guardian of the pool holds it again.
        let holder = holder_when(&client, "a guardian of the pool to hold its lease", |h| {
            h == "g1" || h == "g2"
        })
        .await;
        println!("lease row ({row}): runs went on, {holder} holds the pool");
    }
    for g in &mut guardians {
        g.stop();
    }
}

/// The hosts of a pool start their own runs of one `target = 'all'` occurrence without
/// queueing on the job row: a transaction that holds it as an admission does (another host's
/// admission, slow on a loaded database) holds none of them back. The overlap rules of those
/// runs compare only runs on the same host, which no other guardian claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_an_all_occurrence_start_while_another_admission_holds_the_job() {
    let (db, client) = migrated_db().await;
    let mut guardians = fleet(&db, &client, 2, "listen = false").await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, target, overlap) VALUES ('every', 'true', 'all', 'forbid')",
        )
        .await
        .unwrap();
    let mut locker = db.connect().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM sisy.jobs WHERE name = 'every' FOR NO KEY UPDATE",
        &[],
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline, target_host)
             SELECT id, name, 'default', now(), 'manual', now(), now() + interval '1 hour', h
               FROM sisy.jobs, unnest('{g1,g2}'::text[]) h WHERE name = 'every'",
        )
        .await
        .unwrap();
    wait_until(
        &client,
        "both hosts' runs to succeed while the job row is locked",
        Duration::from_secs(30),
        || "SELECT count(*) FROM sisy.runs WHERE state = 'succeeded'".into(),
        |v: i64| v == 2,
    )
    .await;
    lock.rollback().await.unwrap();
    for g in &mut guardians {
        g.stop();
    }
}

/// Guardians started together do not beat in step: each beats at its own place in the
/// interval (a hash of its name on the wall clock), whatever the moment it started. A thousand
/// guardians beating in the same few milliseconds stalled the database for every run due
/// then. The beats are read from `sisy.hosts.last_seen` (the database's clock, on this same
/// machine): after the first beat at start, each host's beats fall just after its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardians_started_together_beat_at_their_own_place_in_the_interval() {
    const N: usize = 8;
    let (db, client) = migrated_db().await;
    // Before the guardians start: no host can have beaten more than once a second since.
    let started = Instant::now();
    let mut guardians = fleet(
        &db,
        &client,
        N,
        "heartbeat_interval = \"1s\"\nlease = \"3s\"",
    )
    .await;
    let second = Duration::from_secs(1);
    let mut seen: Vec<std::collections::BTreeSet<i64>> = vec![Default::default(); N];
    let began = Instant::now();
    // Beats within this much after the host's place count as at it (a loaded machine).
    let late_ms = 400;
    let at_place = |seen: &Vec<std::collections::BTreeSet<i64>>| -> Vec<usize> {
        (0..N)
            .map(|i| {
                let phase =
                    sisyphus::service::slot::phase_of(&format!("g{}/heartbeat", i + 1), second)
                        .as_millis() as i64;
                seen[i]
                    .iter()
                    .filter(|ms| (*ms % 1000 - phase).rem_euclid(1000) < late_ms)
                    .count()
            })
            .collect()
    };
    loop {
        let rows = client
            .query(
                "SELECT name, (extract(epoch FROM last_seen) * 1000)::int8 FROM sisy.hosts
                  WHERE last_seen > started_at + interval '500 milliseconds'",
                &[],
            )
            .await
            .unwrap();
        for row in rows {
            let name: String = row.get(0);
            let i: usize = name[1..].parse::<usize>().unwrap() - 1;
            seen[i].insert(row.get(1));
        }
        let counts = at_place(&seen);
        if counts.iter().all(|&c| c >= 2) {
            break;
        }
        // And no more often than the interval: a beat at every look would be "at its place"
        // too.
        let most = started.elapsed().as_secs() as usize + 2;
        assert!(
            seen.iter().all(|beats| beats.len() <= most),
            "more beats than one a second: {seen:?}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "beats at each host's place in the interval, by host: {counts:?} (beats seen: {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for g in &mut guardians {
        g.stop();
    }
}

/// With LISTEN, the guardian acting for a pool sleeps until what it knew was due: a new job
/// of its pool seeded by another guardian (any guardian seeds any pool) must wake it, or the
/// job's first occurrences wait for its safety poll (30 s). Here the only guardian serves
/// pool `a`; a job of pool `b` it seeds wakes pool `b` (`sisy_wakeup`, payload `b`) once it
/// has a next_due, after the insert's own wake-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_seeded_by_another_guardian_wakes_its_pool() {
    let (db, client) = migrated_db().await;
    let mut wakeups = Listener::start(&db, "sisy_wakeup").await;
    let mut g = Guardian::start(&db, "g1", "pools = [\"a\"]");
    settled(&client, 1).await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, pool, schedule) VALUES ('elsewhere', 'true', 'b', '0 0 1 1 *');
             INSERT INTO sisy.jobs (name, command, pool, schedule) VALUES ('here', 'true', 'a', '0 0 1 1 *');",
        )
        .await
        .unwrap();
    wait_until(
        &client,
        "the job of pool b seeded",
        LONG,
        || {
            "SELECT count(*) FROM sisy.jobs WHERE name = 'elsewhere' AND next_due IS NOT NULL"
                .into()
        },
        |v: i64| v == 1,
    )
    .await;
    let mut b = 0;
    while b < 2 {
        let payload = wakeups
            .next(
                Duration::from_secs(10),
                "pool b woken again once its job had a next_due",
            )
            .await;
        if payload == "b" {
            b += 1;
        }
    }
    g.stop();
}

/// The per-host lock of a host's own runs still applies the job's overlap rules: a run of an
/// `all` job with `overlap = 'forbid'` on this host while its previous one still runs here is
/// skipped, naming the run that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_own_run_is_skipped_while_its_previous_one_runs_there() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let mut guardians = fleet(&db, &client, 1, "listen = false\npoll_interval = \"100ms\"").await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, target, overlap) VALUES ('long', $1, 'all', 'forbid')",
            &[&until_file(&dir.path().join("go"))],
        )
        .await
        .unwrap();
    let insert = "INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline, target_host)
                  SELECT id, name, 'default', now(), 'manual', now(), now() + interval '1 hour', 'g1'
                    FROM sisy.jobs WHERE name = 'long' RETURNING id";
    let first: i64 = client.query_one(insert, &[]).await.unwrap().get(0);
    wait_started(&client, first).await;
    let second: i64 = client.query_one(insert, &[]).await.unwrap().get(0);
    let state = wait_finished(&client, second, LONG).await;
    assert_eq!(state, "skipped");
    let error: String = client
        .query_one("SELECT error FROM sisy.runs WHERE id = $1", &[&second])
        .await
        .unwrap()
        .get(0);
    assert!(error.contains(&format!("run {first}")), "{error}");
    std::fs::write(dir.path().join("go"), "").unwrap();
    assert_eq!(wait_finished(&client, first, LONG).await, "succeeded");
    for g in &mut guardians {
        g.stop();
    }
}

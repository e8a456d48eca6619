//! Odd values in job and run rows (SPEC §8): a NULL schedule with `next_due` set, huge
//! intervals, infinite or far-off `next_due`, a zone PostgreSQL knows and the guardian does
//! not, an `env` too deep to decode, an `all` job with no host to run it. Each test puts the
//! bad row next to a healthy per-second job of the same pool and checks that the bad row is
//! run, refused or flagged, that the healthy job keeps running, and that the guardian neither
//! died nor panicked.

use std::time::Duration;

use tokio_postgres::Client;

use crate::util::{Guardian, fleet, migrated_db, trigger, wait_finished, wait_until};

const LONG: Duration = Duration::from_secs(60);

/// The healthy neighbour: a per-second job in the default pool.
async fn add_beat(client: &Client) {
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, schedule, overlap)
             VALUES ('beat', 'true', '* * * * * *', 'allow')",
            &[],
        )
        .await
        .unwrap();
}

/// Waits until `beat` has succeeded twice more than it had: the pool is still served.
async fn beat_goes_on(client: &Client) {
    let sql = "SELECT count(*) FROM sisy.runs WHERE job_name = 'beat' AND state = 'succeeded'";
    let before: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
    wait_until(
        client,
        "the healthy job to keep running",
        LONG,
        || sql.into(),
        |n: i64| n >= before + 2,
    )
    .await;
}

/// The guardian runs and never panicked.
fn unharmed(g: &Guardian) {
    let pid = g.pid().expect("the guardian runs");
    assert!(!crate::util::process_gone(pid), "the guardian died");
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

/// Inserts rows the way they were possible before the interval limits existed: with the
/// validation triggers off for this statement's session (a superuser's replica mode).
async fn insert_legacy(client: &Client, sql: &str) {
    client
        .batch_execute(&format!(
            "SET session_replication_role = replica; {sql}; SET session_replication_role = origin"
        ))
        .await
        .unwrap();
}

async fn schedule_error(client: &Client, job: &str) -> String {
    wait_until(
        client,
        &format!("{job} to be flagged"),
        LONG,
        || format!("SELECT coalesce(schedule_error, '') FROM sisy.jobs WHERE name = '{job}'"),
        |e: String| !e.is_empty(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_schedule_with_next_due_runs_once_on_one_guardian() {
    let (db, client) = migrated_db().await;
    let fleet = fleet(&db, &client, 2, "").await;
    add_beat(&client).await;
    beat_goes_on(&client).await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, next_due) VALUES ('once', 'true', now())",
            &[],
        )
        .await
        .unwrap();
    wait_until(
        &client,
        "the one-off run to succeed",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE job_name = 'once' AND state = 'succeeded'".into(),
        |n: i64| n == 1,
    )
    .await;
    beat_goes_on(&client).await;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM sisy.runs WHERE job_name = 'once'),
                    next_due IS NULL, schedule_error
               FROM sisy.jobs WHERE name = 'once'",
            &[],
        )
        .await
        .unwrap();
    let (runs, cleared, error): (i64, bool, Option<String>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(runs, 1, "a one-off runs exactly once");
    assert!(
        cleared,
        "next_due is cleared once the one-off is materialised"
    );
    assert_eq!(error, None);
    fleet.iter().for_each(unharmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_infinite_intervals_are_refused_naming_the_column_and_limit() {
    let (_db, client) = migrated_db().await;
    for column in ["ttl", "jitter", "retry_delay", "max_runtime", "kill_grace"] {
        let sql = format!(
            "INSERT INTO sisy.jobs (name, command, {column}) VALUES ('a', 'true', '100000000 years')"
        );
        let err = client.execute(&sql, &[]).await.expect_err(&sql);
        let message = sisyphus::db::error_message(&err);
        assert!(
            message.contains(column) && message.contains("100 years"),
            "{sql}: {message}"
        );
    }
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, ttl, max_runtime) VALUES ('ok', 'true', '100 years', '99 years')",
            &[],
        )
        .await
        .expect("the limit itself is allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_rows_with_huge_intervals_do_not_stop_the_pool() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    add_beat(&client).await;
    insert_legacy(
        &client,
        "INSERT INTO sisy.jobs (name, command, schedule, ttl, overlap)
             VALUES ('long-ttl', 'true', '* * * * * *', '100000000 years', 'allow');
         INSERT INTO sisy.jobs (name, command, schedule, jitter)
             VALUES ('long-jitter', 'true', '* * * * * *', '100000000 years');
         INSERT INTO sisy.jobs (name, command, max_retries, retry_delay)
             VALUES ('long-retry', 'exit 3', 2147483647, '100000000 years')",
    )
    .await;
    wait_until(
        &client,
        "the huge-ttl job to run",
        LONG,
        || {
            "SELECT count(*) FROM sisy.runs WHERE job_name = 'long-ttl' AND state = 'succeeded'"
                .into()
        },
        |n: i64| n >= 1,
    )
    .await;
    let id = trigger(&client, "long-retry").await;
    assert_eq!(wait_finished(&client, id, LONG).await, "failed");
    let retry: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE job_name = 'long-retry' AND attempt = 2
                AND state = 'pending' AND due_at > now() + interval '99 years'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        retry, 1,
        "the retry waits, capped, instead of failing the write"
    );
    beat_goes_on(&client).await;
    unharmed(&g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_run_with_a_huge_retry_delay_does_not_stop_heartbeats() {
    let (db, client) = migrated_db().await;
    insert_legacy(
        &client,
        "INSERT INTO sisy.jobs (name, command, max_retries, retry_delay)
             VALUES ('long-retry', 'true', 5, '100000000 years');
         INSERT INTO sisy.hosts (name, lease_until) VALUES ('ghost', now() - interval '1 hour');
         INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline,
                                state, host, claimed_at, started_at, heartbeat_at)
         SELECT id, name, pool, now(), 'manual', now(), now() + interval '1 minute',
                'running', 'ghost', now(), now(), now() - interval '1 hour'
           FROM sisy.jobs WHERE name = 'long-retry'",
    )
    .await;
    let g = Guardian::start(&db, "g1", "");
    add_beat(&client).await;
    wait_until(
        &client,
        "the dead host's run to be declared lost",
        LONG,
        || "SELECT count(*) FROM sisy.runs WHERE job_name = 'long-retry' AND state = 'lost'".into(),
        |n: i64| n == 1,
    )
    .await;
    beat_goes_on(&client).await;
    let live: bool = client
        .query_one(
            "SELECT lease_until > now() FROM sisy.hosts WHERE name = 'g1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(live, "the guardian's lease lapsed");
    unharmed(&g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_next_due_values_are_flagged_or_ignored_and_the_pool_carries_on() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "pools = [\"default\", \"far\"]");
    add_beat(&client).await;
    beat_goes_on(&client).await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, schedule) VALUES
                 ('past', 'true', '0 0 1 1 *'), ('future', 'true', '0 0 1 1 *'),
                 ('distant', 'true', '0 0 1 1 *');
             INSERT INTO sisy.jobs (name, command, schedule, pool)
                 VALUES ('alone', 'true', '0 0 1 1 *', 'far');",
        )
        .await
        .unwrap();
    wait_until(
        &client,
        "the jobs to be seeded",
        LONG,
        || "SELECT count(*) FROM sisy.jobs WHERE next_due IS NULL".into(),
        |n: i64| n == 0,
    )
    .await;
    client
        .batch_execute(
            "UPDATE sisy.jobs SET next_due = '-infinity' WHERE name = 'past';
             UPDATE sisy.jobs SET next_due = 'infinity' WHERE name IN ('future', 'alone');
             UPDATE sisy.jobs SET next_due = '294276-12-31 00:00:00+00' WHERE name = 'distant';",
        )
        .await
        .unwrap();
    let error = schedule_error(&client, "past").await;
    assert!(error.contains("next_due"), "{error}");
    beat_goes_on(&client).await;
    unharmed(&g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_postgres_knows_and_the_guardian_lacks_is_flagged() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    add_beat(&client).await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, schedule, timezone)
             VALUES ('posix', 'true', '* * * * *', 'UTC+5')",
            &[],
        )
        .await
        .expect("PostgreSQL accepts a POSIX zone");
    let error = schedule_error(&client, "posix").await;
    assert!(error.contains("UTC+5"), "{error}");
    beat_goes_on(&client).await;
    unharmed(&g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_too_deep_to_decode_fails_its_run_only() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    add_beat(&client).await;
    let deep = format!("{}1{}", "{\"a\":".repeat(300), "}".repeat(300));
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, env) VALUES ('deep', 'true', $1::text::jsonb)",
            &[&deep],
        )
        .await
        .unwrap();
    let id = trigger(&client, "deep").await;
    assert_eq!(wait_finished(&client, id, LONG).await, "failed");
    let error: String = client
        .query_one("SELECT error FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("env"), "{error}");
    beat_goes_on(&client).await;
    unharmed(&g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_occurrence_with_every_host_draining_is_recorded() {
    let (db, client) = migrated_db().await;
    let fleet = fleet(&db, &client, 2, "").await;
    client
        .batch_execute(
            "SELECT sisy.drain('g1'); SELECT sisy.drain('g2');
             -- A hand-written live host whose pools hold a NULL: read, not a failed read.
             INSERT INTO sisy.hosts (name, pools, lease_until)
                 VALUES ('odd', ARRAY[NULL]::text[], now() + interval '1 hour');",
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, schedule, target)
             VALUES ('everywhere', 'true', '* * * * * *', 'all')",
            &[],
        )
        .await
        .unwrap();
    let missed: i64 = wait_until(
        &client,
        "the hostless occurrences to be recorded",
        LONG,
        || {
            "SELECT coalesce(sum(missed_count), 0)::bigint FROM sisy.missed_runs
              WHERE job_name = 'everywhere' AND error LIKE '%no live, undrained host%'"
                .into()
        },
        |n: i64| n >= 3,
    )
    .await;
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE job_name = 'everywhere'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        rows < missed,
        "{rows} rows for {missed} missed occurrences: consecutive ones are coalesced"
    );
    client
        .batch_execute("SELECT sisy.undrain('g1')")
        .await
        .unwrap();
    wait_until(
        &client,
        "the job to run again once a host is back",
        LONG,
        || {
            "SELECT count(*) FROM sisy.runs WHERE job_name = 'everywhere' AND state = 'succeeded'"
                .into()
        },
        |n: i64| n >= 1,
    )
    .await;
    fleet.iter().for_each(unharmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_too_long_for_an_event_is_refused_and_an_old_one_does_not_stop_the_pool() {
    let (db, client) = migrated_db().await;
    let long = "n".repeat(9000);
    let err = client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ($1, 'true')",
            &[&long],
        )
        .await
        .expect_err("a 9000-character name");
    let message = sisyphus::db::error_message(&err);
    assert!(
        message.contains("name") && message.contains("200"),
        "{message}"
    );
    let g = Guardian::start(&db, "g1", "");
    add_beat(&client).await;
    insert_legacy(
        &client,
        &format!(
            "INSERT INTO sisy.jobs (name, command, schedule, overlap)
             VALUES ('{long}', 'true', '* * * * * *', 'allow')"
        ),
    )
    .await;
    wait_until(
        &client,
        "the long-named job to run",
        LONG,
        || {
            "SELECT count(*) FROM sisy.runs WHERE length(job_name) = 9000 AND state = 'succeeded'"
                .into()
        },
        |n: i64| n >= 1,
    )
    .await;
    beat_goes_on(&client).await;
    unharmed(&g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_run_with_infinite_times_fails_alone() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    add_beat(&client).await;
    beat_goes_on(&client).await;
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('odd', 'true');
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline)
             SELECT id, name, pool, '-infinity', 'manual', '-infinity', 'infinity'
               FROM sisy.jobs WHERE name = 'odd';",
        )
        .await
        .unwrap();
    let error: String = wait_until(
        &client,
        "the odd run to fail",
        LONG,
        || "SELECT coalesce(max(error), '') FROM sisy.runs WHERE job_name = 'odd' AND state = 'failed'".into(),
        |e: String| !e.is_empty(),
    )
    .await;
    assert!(
        error.contains("scheduled_for") || error.contains("due_at"),
        "{error}"
    );
    beat_goes_on(&client).await;
    unharmed(&g);
}

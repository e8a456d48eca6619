//! Refused definitions (SPEC §7 "Declaring"), each with the message a user reads: a cycle
//! shown as its path, two roots, an edge onto a scheduled job, a self-edge, an unknown job,
//! a schedule given to a member, deleting a job others run after; two sessions adding the two
//! halves of a cycle at once; and graphs whose shape must not make validation explode.

use std::time::{Duration, Instant};

use super::{backend_pid, blocked_or_done, exec, in_second_session, refused};
use crate::util::migrated_db;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_definition_says_what_is_wrong_and_what_to_do() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES
            ('extract', 'true'), ('load', 'true'), ('report', 'true'),
            ('other', 'true'), ('side', 'true');
         INSERT INTO sisy.jobs (name, command, schedule) VALUES ('nightly', 'true', '0 3 * * *');
         INSERT INTO sisy.dependencies (job, upstream) VALUES
            ('load', 'extract'), ('report', 'load'), ('side', 'other');",
    )
    .await;

    // A cycle, shown as its path in the order things would run.
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('load', 'report')",
    )
    .await;
    assert!(
        e.contains("cycle") && e.contains("report -> load -> report"),
        "{e}"
    );
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('extract', 'report')",
    )
    .await;
    assert!(e.contains("report -> extract -> load -> report"), "{e}");
    // The same through an UPDATE of an edge.
    let e = refused(
        &client,
        "UPDATE sisy.dependencies SET upstream = 'report' WHERE job = 'load'",
    )
    .await;
    assert!(e.contains("cycle"), "{e}");

    // A self-edge.
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('load', 'load')",
    )
    .await;
    assert!(e.contains("'load' cannot run after itself"), "{e}");

    // Unknown jobs, either side.
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('nope', 'load')",
    )
    .await;
    assert!(
        e.contains("no job named 'nope'") && e.contains("create the job first"),
        "{e}"
    );
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('report', 'nada')",
    )
    .await;
    assert!(e.contains("no job named 'nada'"), "{e}");

    // Two roots: report already runs after extract's flow; side belongs to other's flow.
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('report', 'side')",
    )
    .await;
    assert!(
        e.contains("two flows")
            && e.contains("extract")
            && e.contains("other")
            && e.contains("common root"),
        "{e}"
    );

    // An edge onto a scheduled job.
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('nightly', 'report')",
    )
    .await;
    assert!(
        e.contains("'nightly' has a schedule") && e.contains("set its schedule to NULL"),
        "{e}"
    );

    // A schedule given to a member.
    let e = refused(
        &client,
        "UPDATE sisy.jobs SET schedule = '* * * * *' WHERE name = 'report'",
    )
    .await;
    assert!(
        e.contains("'report' runs after 'load'") && e.contains("schedule the flow's root"),
        "{e}"
    );
    // The root may have one.
    exec(
        &client,
        "UPDATE sisy.jobs SET schedule = '0 4 * * *' WHERE name = 'extract'",
    )
    .await;

    // Deleting a job others run after names them; deleting a dependent removes its edges.
    let e = refused(&client, "DELETE FROM sisy.jobs WHERE name = 'load'").await;
    assert!(
        e.contains("'load' cannot be deleted") && e.contains("'report'"),
        "{e}"
    );
    exec(&client, "DELETE FROM sisy.jobs WHERE name = 'report'").await;
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM sisy.dependencies WHERE job = 'report'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    // Bad values of the new columns.
    let e = refused(
        &client,
        "UPDATE sisy.jobs SET trigger_rule = 'any_success' WHERE name = 'load'",
    )
    .await;
    assert!(e.contains("trigger_rule must be one of"), "{e}");
    let e = refused(
        &client,
        "UPDATE sisy.jobs SET flow_timeout = '-1 second' WHERE name = 'extract'",
    )
    .await;
    assert!(e.contains("flow_timeout must be positive"), "{e}");
}

/// NULLs where a name is expected: the message says the column must not be NULL, rather
/// than looking for a job named NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_job_or_upstream_is_refused_as_null() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true')",
    )
    .await;
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES (NULL, 'a')",
    )
    .await;
    assert!(
        e.contains("job") && e.contains("NULL") && !e.contains("no job named"),
        "{e}"
    );
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('a', NULL)",
    )
    .await;
    assert!(
        e.contains("upstream") && e.contains("NULL") && !e.contains("no job named"),
        "{e}"
    );
}

/// Two sessions, both in open transactions, each adding one half of a cycle: the advisory
/// lock makes the second wait and then see the first; exactly one commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_adding_the_two_halves_of_a_cycle_cannot_both_succeed() {
    let (db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true')",
    )
    .await;
    for round in 0..3 {
        exec(&client, "DELETE FROM sisy.dependencies").await;
        let one = db.connect().await;
        let two = db.connect().await;
        exec(&one, "BEGIN").await;
        exec(&two, "BEGIN").await;
        exec(
            &one,
            "INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a')",
        )
        .await;
        // The second half waits for the first transaction (its validation holds the lock).
        let pid = backend_pid(&two).await;
        let second = in_second_session(
            two,
            "INSERT INTO sisy.dependencies (job, upstream) VALUES ('a', 'b')".into(),
        );
        // It reaches the lock (or, could it pass without waiting, passes meanwhile).
        blocked_or_done(&client, pid, &second).await;
        exec(&one, "COMMIT").await;
        let (second, _two) = tokio::time::timeout(Duration::from_secs(30), second)
            .await
            .expect("the second session ends once the first commits")
            .unwrap();
        let e = second.expect_err("both halves of a cycle were committed");
        assert!(
            e.contains("cycle") && e.contains("b -> a -> b"),
            "round {round}: {e}"
        );
        let edges: i64 = client
            .query_one("SELECT count(*) FROM sisy.dependencies", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(edges, 1, "round {round}");
    }
}

/// A ladder of 24 layers of two jobs, each running after both jobs of the layer above: 2^24
/// paths from top to bottom. Validating one more edge at the top must follow the jobs (49),
/// not the paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validating_an_edge_above_a_graph_with_millions_of_paths_stays_fast() {
    let (_db, client) = migrated_db().await;
    let layers = 24;
    let mut sql =
        "INSERT INTO sisy.jobs (name, command) VALUES ('start', 'true'), ('top', 'true');"
            .to_string();
    for l in 0..layers {
        sql += &format!(
            "INSERT INTO sisy.jobs (name, command) VALUES ('l{l}a', 'true'), ('l{l}b', 'true');"
        );
    }
    sql += "INSERT INTO sisy.dependencies (job, upstream) VALUES ('l0a', 'top'), ('l0b', 'top');";
    for l in 1..layers {
        let p = l - 1;
        sql += &format!(
            "INSERT INTO sisy.dependencies (job, upstream) VALUES
                ('l{l}a', 'l{p}a'), ('l{l}a', 'l{p}b'), ('l{l}b', 'l{p}a'), ('l{l}b', 'l{p}b');"
        );
    }
    exec(&client, &sql).await;
    exec(&client, "SET statement_timeout = '20s'").await;
    let began = Instant::now();
    exec(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('top', 'start')",
    )
    .await;
    let took = began.elapsed();
    eprintln!("an edge above a ladder of {layers} layers: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A cycle through the ladder is still found, and shown as one path.
    let began = Instant::now();
    let e = refused(
        &client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('top', 'l23b')",
    )
    .await;
    assert!(
        e.contains("cycle") && e.contains("l23b -> top -> l0"),
        "{e}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
}

/// Removing or moving an edge must not leave a job in two flows: R -> a -> c, R -> b -> c;
/// dropping a's edge from R would make a a second root of c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_or_moving_an_edge_cannot_give_a_job_two_roots() {
    let (_db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('r', 'true'), ('a', 'true'), ('b', 'true'),
                                                      ('c', 'true'), ('s', 'true'), ('t', 'true');
         INSERT INTO sisy.dependencies (job, upstream) VALUES ('a', 'r'), ('b', 'r'), ('c', 'a'), ('c', 'b'), ('t', 's');",
    )
    .await;
    let e = refused(
        &client,
        "DELETE FROM sisy.dependencies WHERE job = 'a' AND upstream = 'r'",
    )
    .await;
    assert!(
        e.contains("'c'") && e.contains("two flows") && e.contains("a, r"),
        "{e}"
    );
    let e = refused(
        &client,
        "UPDATE sisy.dependencies SET upstream = 's' WHERE job = 'a' AND upstream = 'r'",
    )
    .await;
    assert!(e.contains("'c'") && e.contains("two flows"), "{e}");
    // Allowed: removing c's edge first, then a's; a leaf's edge; deleting a leaf job.
    exec(
        &client,
        "DELETE FROM sisy.dependencies WHERE job = 'c' AND upstream = 'a'",
    )
    .await;
    exec(
        &client,
        "DELETE FROM sisy.dependencies WHERE job = 'a' AND upstream = 'r'",
    )
    .await;
    exec(&client, "DELETE FROM sisy.jobs WHERE name = 't'").await;
    exec(
        &client,
        "UPDATE sisy.dependencies SET upstream = 'r' WHERE job = 'c'",
    )
    .await;
}

/// One session gives a job an upstream while another gives it a schedule, both in open
/// transactions: exactly one succeeds, whichever goes first (a job with both would run on its
/// own schedule and in its flow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_and_a_schedule_given_at_once_to_a_job_cannot_both_succeed() {
    let (db, client) = migrated_db().await;
    exec(
        &client,
        "INSERT INTO sisy.jobs (name, command) VALUES ('a', 'true'), ('b', 'true')",
    )
    .await;
    let edge = "INSERT INTO sisy.dependencies (job, upstream) VALUES ('b', 'a')";
    let schedule = "UPDATE sisy.jobs SET schedule = '0 3 * * *' WHERE name = 'b'";
    for (first, second) in [(edge, schedule), (schedule, edge)] {
        exec(
            &client,
            "DELETE FROM sisy.dependencies; UPDATE sisy.jobs SET schedule = NULL",
        )
        .await;
        let one = db.connect().await;
        let two = db.connect().await;
        exec(&one, "BEGIN").await;
        exec(&two, "BEGIN").await;
        exec(&one, first).await;
        let pid = backend_pid(&two).await;
        let later = in_second_session(two, second.to_string());
        blocked_or_done(&client, pid, &later).await;
        exec(&one, "COMMIT").await;
        let (r, _two) = tokio::time::timeout(Duration::from_secs(30), later)
            .await
            .expect("the second session ends once the first commits")
            .unwrap();
        let e = r.expect_err(&format!("both '{first}' and '{second}' were committed"));
        assert!(e.contains("schedule"), "{e}");
    }
}

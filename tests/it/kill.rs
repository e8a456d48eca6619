//! `sisy.kill` of a run that is claimed but not started yet (waiting for admission, or
//! waiting for the run it replaces to end): it must end without its process ever starting.

use std::time::Duration;

use sisyphus::service::claimer::{Admission, Claimer};

use crate::util::{
    Guardian, migrated_db, processes_with_env, trigger, wait_finished, wait_started, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// State, whether it started, its pid and error.
async fn ended(
    client: &tokio_postgres::Client,
    id: i64,
) -> (String, bool, Option<i32>, Option<String>) {
    let row = client
        .query_one(
            "SELECT state, started_at IS NOT NULL, pid, error FROM sisy.runs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_never_starts_a_claimed_run_whose_kill_was_requested() {
    let (db, client) = migrated_db().await;
    client
        .batch_execute(
            "INSERT INTO sisy.hosts (name, lease_until) VALUES ('h', now() + interval '1 hour');
             INSERT INTO sisy.jobs (name, command, overlap) VALUES
                ('free', 'true', 'allow'), ('guarded', 'true', 'forbid')",
        )
        .await
        .unwrap();
    let pool = sisyphus::db::pool(&db.url, 2).unwrap();
    let claimer = Claimer::new(pool, "h".into());
    // One run admitted without a lock (all allow), one under the job lock (forbid).
    for job in ["free", "guarded"] {
        let id = trigger(&client, job).await;
        let mut claimed = claimer.claim(&["default".into()], 1).await.unwrap();
        assert_eq!(claimed.iter().map(|r| r.id).collect::<Vec<_>>(), [id]);
        client
            .execute("SELECT sisy.kill($1)", &[&id])
            .await
            .unwrap();
        let decisions = claimer.admit(&mut claimed).await.unwrap();
        assert!(
            !matches!(decisions.get(&id), Some(Admission::Start { .. })),
            "{job}: admission started a run whose kill was requested: {decisions:?}"
        );
        let (state, started, pid, error) = ended(&client, id).await;
        assert_eq!(
            (state.as_str(), started, pid),
            ("killed", false, None),
            "{job}"
        );
        let error = error.unwrap_or_default();
        assert!(
            error.contains("sisy.kill") && error.contains("before it started"),
            "{job}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_of_a_run_waiting_to_replace_another_ends_it_before_it_starts() {
    let (db, client) = migrated_db().await;
    let tag = format!("kill-{}", db.name);
    // The replaced run ignores SIGTERM and has minutes of grace: the replacement waits.
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap, kill_grace, env)
             VALUES ('newest', 'trap \"\" TERM; sleep 600', 'replace', '2 minutes',
                     jsonb_build_object('KILL_TAG', $1::text))",
            &[&tag],
        )
        .await
        .unwrap();
    let g1 = Guardian::start(&db, "g1", "capacity = 2");
    let first = trigger(&client, "newest").await;
    wait_started(&client, first).await;
    let second = trigger(&client, "newest").await;
    wait_until(
        &client,
        "the replacement to be claimed and to ask for the first run's end",
        LONG,
        || format!("SELECT kill_requested_at IS NOT NULL FROM sisy.runs WHERE id = {first}"),
        |asked: bool| asked,
    )
    .await;

    let asked = std::time::Instant::now();
    client
        .execute("SELECT sisy.kill($1)", &[&second])
        .await
        .unwrap();
    // Notified, the guardian acts at once; well within a heartbeat or two.
    let state = wait_finished(&client, second, Duration::from_secs(5)).await;
    eprintln!("sisy.kill to the waiting run ended: {:?}", asked.elapsed());
    let (_, started, pid, error) = ended(&client, second).await;
    assert_eq!((state.as_str(), started, pid), ("killed", false, None));
    assert!(
        error.as_deref().unwrap_or("").contains("before it started"),
        "{error:?}"
    );

    // The first run is still there (it ignores SIGTERM); once it is gone, nothing starts.
    for (pid, _) in processes_with_env("KILL_TAG", &tag) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_finished(&client, first, LONG).await;
    let (state, started, pid, _) = ended(&client, second).await;
    assert_eq!((state.as_str(), started, pid), ("killed", false, None));
    let runs: i64 = client
        .query_one("SELECT count(*) FROM sisy.runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 2, "{}", g1.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waiting_to_replace_another_starts_even_when_it_fills_the_capacity() {
    let (db, client) = migrated_db().await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap, kill_grace)
             VALUES ('newest', 'sleep 600', 'replace', '1 second')",
            &[],
        )
        .await
        .unwrap();
    let _g2 = Guardian::start(&db, "g2", "");
    let first = trigger(&client, "newest").await;
    wait_started(&client, first).await;
    // g2 takes nothing new; g1 has room for exactly the replacement.
    client
        .execute("SELECT sisy.drain('g2')", &[])
        .await
        .unwrap();
    let g1 = Guardian::start(&db, "g1", "capacity = 1");
    let second = trigger(&client, "newest").await;
    assert_eq!(wait_finished(&client, first, LONG).await, "killed");
    wait_started(&client, second).await;
    let host: String = client
        .query_one("SELECT host FROM sisy.runs WHERE id = $1", &[&second])
        .await
        .unwrap()
        .get(0);
    assert_eq!(host, "g1", "{}", g1.log());
    client
        .execute("SELECT sisy.kill($1)", &[&second])
        .await
        .unwrap();
    assert_eq!(wait_finished(&client, second, LONG).await, "killed");
}

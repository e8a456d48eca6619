//! What the per-run savings must keep true: a run's `started_at` is when its process
//! started, whatever delayed the start after admission; results of runs that end together
//! are written together, each one right.

use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::{
    Guardian, migrated_db, output_of, processes_with_env, shared_dir, spawner_of, trigger,
    wait_finished, wait_for, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_at_is_when_the_process_started_not_when_the_run_was_admitted() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    let dir = shared_dir();
    let clock = dir.path().join("clock");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('first', 'true'), ('late', $1)",
            &[&format!("date +%s.%N > {}", clock.display())],
        )
        .await
        .unwrap();
    // The spawner starts with the first run; then it is frozen, so that the next run is
    // admitted (its row says running) while its process cannot start yet.
    let first = trigger(&client, "first").await;
    assert_eq!(wait_finished(&client, first, LONG).await, "succeeded");
    let spawner = spawner_of(g.pid().unwrap()).expect("the spawner runs");
    let pid = nix::unistd::Pid::from_raw(spawner);
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    let id = trigger(&client, "late").await;
    let admitted: f64 = wait_until(
        &client,
        "the run to be admitted",
        LONG,
        || format!("SELECT coalesce(extract(epoch FROM started_at)::float8, 0) FROM sisy.runs WHERE id = {id}"),
        |at: f64| at > 0.0,
    )
    .await;
    // The stimulus, not a wait for an event: the time between admission and the start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap();
    assert_eq!(wait_finished(&client, id, LONG).await, "succeeded");
    let own: f64 = std::fs::read_to_string(&clock)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (started, claimed): (f64, f64) = {
        let row = client
            .query_one(
                "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM claimed_at)::float8
                   FROM sisy.runs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    eprintln!(
        "admitted {:.3}, process started {:.3} s later, its own clock {:.3} s later",
        admitted,
        started - admitted,
        own - admitted
    );
    assert!(
        claimed <= admitted,
        "claimed_at {claimed} after admission {admitted}"
    );
    assert!(
        started - admitted >= 0.5,
        "started_at is the admission instant, not the process's start: {started} vs {admitted}"
    );
    // The shell's start comes before its first command reads the clock.
    assert!(
        started <= own + 0.005,
        "started_at {started} after the job's own clock {own}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_end_together_are_recorded_together_and_each_right() {
    const RUNS: usize = 16;
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", &format!("capacity = {RUNS}"));
    let dir = shared_dir();
    let gate = dir.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    // Held here: each job waits on a shared lock of the same file, so all of them end the
    // moment it is released.
    let held = std::fs::File::open(&gate).unwrap();
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let tag = format!("together-{}", db.name);
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap, env)
             VALUES ('together', $1, 'allow', jsonb_build_object('TOGETHER', $2::text))",
            &[
                &format!(
                    "exec flock -s {} sh -c 'echo run $SISY_RUN_ID; exit $(($SISY_RUN_ID % 3))'",
                    gate.display()
                ),
                &tag,
            ],
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        ids.push(trigger(&client, "together").await);
    }
    wait_for("every job to wait at the gate", LONG, || {
        processes_with_env("TOGETHER", &tag).len() >= RUNS
    })
    .await;
    drop(held);
    let ended: i64 = wait_until(
        &client,
        "every run to end",
        LONG,
        || {
            "SELECT count(*) FROM sisy.runs WHERE job_name = 'together' AND finished_at IS NOT NULL"
                .into()
        },
        |n: i64| n == RUNS as i64,
    )
    .await;
    assert_eq!(ended, RUNS as i64);
    let rows = client
        .query(
            "SELECT id, state, exit_code, output, error, started_at <= finished_at
               FROM sisy.runs WHERE job_name = 'together' AND attempt = 1 ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        let id: i64 = row.get(0);
        let code = (id % 3) as i32;
        let state: String = row.get(1);
        assert_eq!(
            state,
            if code == 0 { "succeeded" } else { "failed" },
            "run {id}"
        );
        assert_eq!(row.get::<_, Option<i32>>(2), Some(code), "run {id}");
        assert_eq!(row.get::<_, String>(3), format!("run {id}\n"), "run {id}");
        if code != 0 {
            assert_eq!(
                row.get::<_, Option<String>>(4).as_deref(),
                Some(format!("exited with code {code}").as_str())
            );
        }
        assert!(
            row.get::<_, bool>(5),
            "run {id}: started_at after finished_at"
        );
    }
    // Rows written by one statement carry its transaction id.
    let statements: i64 = client
        .query_one(
            "SELECT count(DISTINCT xmin::text) FROM sisy.runs WHERE job_name = 'together' AND attempt = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!("{RUNS} runs that ended together recorded in {statements} statements");
    assert!(
        statements < RUNS as i64,
        "each of the {RUNS} results was written by a statement of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shim_serving_one_run_after_another_carries_nothing_over() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    // What each job sees of its process: its shim (parent), a variable only the first job
    // has, its working directory. The third waits, for its descriptors to be read.
    let probe = "echo \"$PPID|${SECRET-unset}|$(pwd)\"";
    let dir = shared_dir();
    let flag = dir.path().join("go");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, env, workdir)
             VALUES ('first', $1, '{\"SECRET\": \"s3cret\"}', $2), ('second', $1, '{}', '/'),
                    ('third', $3, '{}', '/')",
            &[
                &probe,
                &dir.path().to_str().unwrap(),
                &crate::util::until_file(&flag),
            ],
        )
        .await
        .unwrap();
    let first = trigger(&client, "first").await;
    assert_eq!(wait_finished(&client, first, LONG).await, "succeeded");
    let second = trigger(&client, "second").await;
    assert_eq!(wait_finished(&client, second, LONG).await, "succeeded");
    let (a, b) = (
        output_of(&client, first).await,
        output_of(&client, second).await,
    );
    let a: Vec<&str> = a.trim_end().split('|').collect();
    let b: Vec<&str> = b.trim_end().split('|').collect();
    assert_eq!(
        a[0], b[0],
        "the second run had a shim of its own: {a:?} {b:?}"
    );
    let shim: i32 = a[0].parse().unwrap();
    let spawner = spawner_of(g.pid().unwrap()).expect("the spawner runs");
    assert_eq!(crate::util::parent_of(shim), Some(spawner));
    assert_eq!((a[1], a[2]), ("s3cret", dir.path().to_str().unwrap()));
    assert_eq!((b[1], b[2]), ("unset", "/"));
    let third = trigger(&client, "third").await;
    let shell = crate::util::wait_started(&client, third).await;
    assert_eq!(crate::util::parent_of(shell), Some(shim), "a third shim");
    assert_eq!(crate::util::descriptors_of(shell), vec![0, 1, 2]);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(wait_finished(&client, third, LONG).await, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_free_shim_costs_the_next_run_nothing() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('parent', 'echo $PPID')",
            &[],
        )
        .await
        .unwrap();
    let first = trigger(&client, "parent").await;
    assert_eq!(wait_finished(&client, first, LONG).await, "succeeded");
    let shim: i32 = output_of(&client, first).await.trim().parse().unwrap();
    let spawner = spawner_of(g.pid().unwrap()).expect("the spawner runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), Signal::SIGKILL).unwrap();
    wait_for("the shim to be gone", LONG, || {
        crate::util::process_gone(shim)
    })
    .await;
    let next = trigger(&client, "parent").await;
    assert_eq!(wait_finished(&client, next, LONG).await, "succeeded");
    let other: i32 = output_of(&client, next).await.trim().parse().unwrap();
    assert_ne!(other, shim);
    assert_eq!(crate::util::parent_of(other), Some(spawner));
}

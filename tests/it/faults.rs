//! What production does to a guardian, done for real: SIGKILL, SIGSTOP/SIGCONT, SIGTERM with
//! jobs that outlive the grace, SIGHUP with a changed config. Each test runs real guardian
//! processes on its own database and waits on what they write and on /proc, never on a
//! fixed sleep. Database outages and failover are in `outages`.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::{
    Guardian, migrated_db, process_gone, processes_with_env, shared_dir, trigger, wait_finished,
    wait_for,
};

const LONG: Duration = Duration::from_secs(60);

/// A job whose processes are hard to kill: a child, a grandchild that ignores SIGTERM, and
/// a process that left the job's process group with setsid (its parent exits, so it is
/// orphaned). Each writes its pid into `dir`.
fn stubborn_job(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "sleep 600 & echo $! > {d}/child; \
         sh -c 'trap \"\" TERM; echo $$ > {d}/deaf; while :; do sleep 1; done' & \
         (setsid sh -c 'echo $$ > {d}/escaped; exec sleep 600' &); \
         wait"
    )
}

fn pids_in(dir: &std::path::Path) -> Vec<i32> {
    ["child", "deaf", "escaped"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Inserts the stubborn job, tagged with `tag` in its environment, and starts it.
async fn start_stubborn(client: &tokio_postgres::Client, dir: &std::path::Path, tag: &str) -> i64 {
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, kill_grace, env) VALUES ('stubborn', $1, '1 second', jsonb_build_object('FAULT_TAG', $2::text))",
            &[&stubborn_job(dir), &tag],
        )
        .await
        .unwrap();
    let id = trigger(client, "stubborn").await;
    wait_for("the job's three processes", LONG, || {
        pids_in(dir).len() == 3
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_killed_with_sigkill_leaves_no_job_process_behind() {
    let (db, client) = migrated_db().await;
    let mut g = Guardian::start(&db, "g1", "");
    let dir = shared_dir();
    let tag = format!("sigkill-{}", db.name);
    let id = start_stubborn(&client, dir.path(), &tag).await;
    let pids = pids_in(dir.path());

    let killed = Instant::now();
    g.kill();
    wait_for(
        "every process of the job to die with its guardian",
        Duration::from_secs(20),
        || {
            pids.iter().all(|p| process_gone(*p))
                && processes_with_env("FAULT_TAG", &tag).is_empty()
        },
    )
    .await;
    eprintln!(
        "guardian SIGKILL to the last job process gone (kill_grace 1 s): {:?}",
        killed.elapsed()
    );
    // Nobody recorded anything yet: the host is dead. Its next process says what happened.
    g.restart();
    assert_eq!(wait_finished(&client, id, LONG).await, "lost");
    let error: String = client
        .query_one("SELECT error FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("restarted"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_processes_whose_guardian_and_shim_were_both_killed_die_at_the_next_start() {
    let (db, client) = migrated_db().await;
    let mut g = Guardian::start(&db, "g1", "");
    let dir = shared_dir();
    let tag = format!("pkill-{}", db.name);
    let id = start_stubborn(&client, dir.path(), &tag).await;
    let pids = pids_in(dir.path());
    // `pkill -9 sisy`: the guardian (frozen first, so it cannot clean up after its shim)
    // and the run's shim die at once.
    g.signal(Signal::SIGSTOP);
    for (pid, _, shim) in processes_with_env("FAULT_TAG", &tag) {
        if shim {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        }
    }
    g.kill();
    // The shell died with its shim (PDEATHSIG); what it started lives on, unsupervised.
    wait_for("the shim to be gone", LONG, || {
        processes_with_env("FAULT_TAG", &tag)
            .iter()
            .all(|(_, _, shim)| !shim)
    })
    .await;
    assert!(
        pids.iter().any(|p| !process_gone(*p)),
        "nothing survived: the test does not test the restart"
    );
    g.restart();
    wait_for(
        "the restarted guardian to kill what its predecessor left",
        Duration::from_secs(20),
        || {
            pids.iter().all(|p| process_gone(*p))
                && processes_with_env("FAULT_TAG", &tag).is_empty()
        },
    )
    .await;
    assert_eq!(wait_finished(&client, id, LONG).await, "lost");
    assert!(g.log().contains("left behind"), "{}", g.log());
}

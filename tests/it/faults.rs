//! What production does to a guardian, done for real: SIGKILL, SIGSTOP/SIGCONT, SIGTERM with
//! jobs that outlive the grace, SIGHUP with a changed config. Each test runs real guardian
//! processes on its own database and waits on what they write and on /proc, never on a
//! fixed sleep. Database outages and failover are in `outages`.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::{
    Guardian, ProcessSampler, Proxy, fleet, migrated_db, parent_of, process_gone,
    processes_with_env, shared_dir, shims_of, spawner_of, trigger, until_file, wait_finished,
    wait_for, wait_started, wait_until,
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

    let guardian = g.pid().expect("the guardian runs");
    let spawner = spawner_of(guardian).expect("the guardian's shim spawner runs");
    let killed = Instant::now();
    g.kill();
    wait_for(
        "the shim spawner to end with its guardian",
        Duration::from_secs(20),
        || process_gone(spawner),
    )
    .await;
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
    let guardian = g.pid().expect("the guardian runs");
    g.signal(Signal::SIGSTOP);
    let shims = shims_of(guardian);
    assert!(!shims.is_empty(), "the run's shim was not found");
    for shim in &shims {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*shim), Signal::SIGKILL).unwrap();
    }
    g.kill();
    // The shell died with its shim (PDEATHSIG); what it started lives on, unsupervised.
    wait_for("the shim to be gone", LONG, || {
        shims.iter().all(|p| process_gone(*p))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_guardian_is_declared_dead_in_time_and_its_run_never_overlaps_the_retry() {
    let (db, client) = migrated_db().await;
    // heartbeat_interval 1 s, lease 3 s (the test defaults).
    let guardians = fleet(&db, &client, 2, "").await;
    let tag = format!("pause-{}", db.name);
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap, max_retries, retry_delay, env)
             VALUES ('solo', 'sleep 600', 'forbid', 1, '0', jsonb_build_object('FAULT_TAG', $1::text))",
            &[&tag],
        )
        .await
        .unwrap();
    let first = trigger(&client, "solo").await;
    wait_started(&client, first).await;
    let host: String = client
        .query_one("SELECT host FROM sisy.runs WHERE id = $1", &[&first])
        .await
        .unwrap()
        .get(0);
    let paused = &guardians[if host == "g1" { 0 } else { 1 }];
    let sampler = ProcessSampler::start("FAULT_TAG", &tag);

    let paused_at = Instant::now();
    paused.signal(Signal::SIGSTOP);
    assert_eq!(wait_finished(&client, first, LONG).await, "lost");
    let wall = paused_at.elapsed();
    // Both instants from the database clock: the paused host's last renewal and expiry,
    // and the moment another guardian declared the run lost.
    let row = client
        .query_one(
            "SELECT extract(epoch FROM r.finished_at - h.last_seen)::float8,
                    extract(epoch FROM r.finished_at - h.lease_until)::float8, r.error
               FROM sisy.runs r JOIN sisy.hosts h ON h.name = r.host WHERE r.id = $1",
            &[&first],
        )
        .await
        .unwrap();
    let (since_renewal, after_expiry, error): (f64, f64, String) =
        (row.get(0), row.get(1), row.get(2));
    eprintln!(
        "lost detection: {since_renewal:.3} s after the last renewal, {after_expiry:.3} s after \
         the lease expired (lease 3 s, heartbeat 1 s); {wall:?} after SIGSTOP"
    );
    assert!(error.contains("stopped heartbeating"), "{error}");
    // Bound: lease + one heartbeat, with room for a loaded machine.
    assert!(
        since_renewal <= 3.0 + 1.0 + 1.0,
        "declared lost {since_renewal} s after the last renewal"
    );
    assert!(
        after_expiry >= 0.0,
        "declared lost before the lease expired"
    );

    let second: i64 = wait_until(
        &client,
        "the retry to start on the other host",
        LONG,
        || {
            format!(
                "SELECT coalesce(max(id), 0) FROM sisy.runs WHERE job_name = 'solo' AND attempt = 2
                AND started_at IS NOT NULL AND host <> '{host}'"
            )
        },
        |id: i64| id > 0,
    )
    .await;
    paused.signal(Signal::SIGCONT);
    // The resumed guardian records that the first attempt's processes were killed on it.
    wait_until(
        &client,
        "the resumed guardian to record the kill of its processes",
        LONG,
        || format!("SELECT error FROM sisy.runs WHERE id = {first}"),
        |e: String| e.contains(&format!("on {host}")) && e.contains("killed"),
    )
    .await;
    wait_for("the first attempt's processes to be gone", LONG, || {
        processes_with_env("FAULT_TAG", &tag)
            .iter()
            .all(|(_, run)| *run != Some(first))
    })
    .await;
    let (overlap, samples) = sampler.longest_overlap();
    eprintln!("two attempts alive at once for at most {overlap:?} ({samples} samples)");
    assert!(
        overlap <= Duration::from_secs(1),
        "two attempts of a forbid job ran together for {overlap:?}"
    );
    let state: String = client
        .query_one("SELECT state FROM sisy.runs WHERE id = $1", &[&first])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "lost");
    client
        .execute("SELECT sisy.kill($1)", &[&second])
        .await
        .unwrap();
    wait_finished(&client, second, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_what_outlives_the_grace_and_the_retry_runs_elsewhere() {
    let (db, client) = migrated_db().await;
    let mut g1 = Guardian::start(&db, "g1", "shutdown_grace = \"1s\"");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, max_retries, retry_delay, kill_grace)
             VALUES ('long', 'sleep 600', 1, '0', '2 seconds')",
            &[],
        )
        .await
        .unwrap();
    let first = trigger(&client, "long").await;
    wait_started(&client, first).await;
    let g2 = Guardian::start(&db, "g2", "");
    let began = Instant::now();
    assert_eq!(g1.stop(), Some(0), "guardian log:\n{}", g1.log());
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "shutdown took {took:?} with shutdown_grace 1 s"
    );
    let row = client
        .query_one(
            "SELECT state, error FROM sisy.runs WHERE id = $1",
            &[&first],
        )
        .await
        .unwrap();
    let (state, error): (String, String) = (row.get(0), row.get(1));
    assert_eq!(
        (state.as_str(), error.as_str()),
        ("killed", "guardian shutdown")
    );
    let second: i64 = wait_until(
        &client,
        "the retry to start on g2",
        LONG,
        || {
            "SELECT coalesce(max(id), 0) FROM sisy.runs WHERE attempt = 2 AND reason = 'retry'
                AND host = 'g2' AND started_at IS NOT NULL"
                .into()
        },
        |id: i64| id > 0,
    )
    .await;
    // SIGINT means the same; the last allowed attempt is not retried again.
    g2.signal(Signal::SIGINT);
    assert_eq!(wait_finished(&client, second, LONG).await, "killed");
    let runs: i64 = client
        .query_one("SELECT count(*) FROM sisy.runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_capacity_pools_and_users_without_touching_running_jobs() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "capacity = 1\npools = [\"a\"]");
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, pool) VALUES
                 ('holder', 'sleep 600', 'a'), ('second', 'sleep 600', 'a'), ('other', 'echo other', 'b');
             INSERT INTO sisy.jobs (name, command, pool, run_as) VALUES ('as-daemon', 'id -un', 'a', 'daemon');",
        )
        .await
        .unwrap();
    let holder = trigger(&client, "holder").await;
    let pid = wait_started(&client, holder).await;
    let second = trigger(&client, "second").await;
    let other = trigger(&client, "other").await;

    g.edit_config(|text| {
        text.replace("capacity = 1", "capacity = 3").replace(
            "pools = [\"a\"]",
            "pools = [\"a\", \"b\"]\nallowed_users = [\"daemon\"]",
        )
    });
    g.signal(Signal::SIGHUP);
    wait_for("the reload", LONG, || {
        g.log().contains("configuration reloaded")
    })
    .await;
    assert_eq!(wait_finished(&client, other, LONG).await, "succeeded");
    wait_started(&client, second).await;
    let as_daemon = trigger(&client, "as-daemon").await;
    assert_eq!(wait_finished(&client, as_daemon, LONG).await, "succeeded");
    let output: String = client
        .query_one("SELECT output FROM sisy.runs WHERE id = $1", &[&as_daemon])
        .await
        .unwrap()
        .get(0);
    assert_eq!(output.trim(), "daemon");
    // The running job was not touched.
    let row = client
        .query_one("SELECT state, pid FROM sisy.runs WHERE id = $1", &[&holder])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("running".into(), pid)
    );
    assert!(!process_gone(pid));
    wait_until(
        &client,
        "the host row to show the new capacity and pools",
        LONG,
        || "SELECT capacity = 3 AND pools = '{a,b}' FROM sisy.hosts WHERE name = 'g1'".into(),
        |ok: bool| ok,
    )
    .await;

    // A config that does not load changes nothing and stops nothing.
    g.edit_config(|text| format!("{text}\ncapacity = \"many\"\n"));
    g.signal(Signal::SIGHUP);
    wait_for("the refused reload", LONG, || {
        g.log().contains("was not reloaded")
    })
    .await;
    assert!(!process_gone(pid));
    for id in [holder, second] {
        client
            .execute("SELECT sisy.kill($1)", &[&id])
            .await
            .unwrap();
        assert_eq!(wait_finished(&client, id, LONG).await, "killed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_cut_off_from_the_database_fences_its_lost_run_when_it_comes_back() {
    let (db, client) = migrated_db().await;
    let proxy = Proxy::start(crate::pg::server());
    let tag = format!("partition-{}", db.name);
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, max_retries, retry_delay, env)
             VALUES ('solo', 'sleep 600', 1, '0', jsonb_build_object('FAULT_TAG', $1::text))",
            &[&tag],
        )
        .await
        .unwrap();
    // g1 reaches the database through the proxy; it alone is up when the run is claimed.
    let g1 = Guardian::start(&proxy.db(&db), "g1", "");
    let first = trigger(&client, "solo").await;
    let pid = wait_started(&client, first).await;
    let _g2 = Guardian::start(&db, "g2", "");
    wait_until(
        &client,
        "g2 to be up for a whole lease (so that it may judge others)",
        LONG,
        || {
            "SELECT coalesce((SELECT now() - started_at > interval '4 seconds' FROM sisy.hosts WHERE name = 'g2'), false)".into()
        },
        |ok: bool| ok,
    )
    .await;

    proxy.cut();
    assert_eq!(wait_finished(&client, first, LONG).await, "lost");
    wait_until(
        &client,
        "the retry to start on g2",
        LONG,
        || {
            "SELECT count(*) FROM sisy.runs WHERE attempt = 2 AND host = 'g2' AND pid IS NOT NULL"
                .into()
        },
        |n: i64| n == 1,
    )
    .await;
    // Cut off, g1 cannot tell a partition from a database outage: its job runs on (the
    // documented overlap of a partition) until it hears from the database again.
    assert!(!process_gone(pid), "g1 killed its job while cut off");
    let healed = Instant::now();
    proxy.heal();
    wait_for("g1 to fence its lost run", LONG, || process_gone(pid)).await;
    let fenced_in = healed.elapsed();
    eprintln!("partition healed to the lost run's process killed: {fenced_in:?}");
    wait_until(
        &client,
        "g1 to record the fencing",
        LONG,
        || format!("SELECT error FROM sisy.runs WHERE id = {first}"),
        |e: String| e.contains("killed at once") && e.contains("(fencing)"),
    )
    .await;
    let state: String = client
        .query_one("SELECT state FROM sisy.runs WHERE id = $1", &[&first])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "lost");
    assert!(g1.log().contains("fencing"), "{}", g1.log());
    assert!(
        fenced_in < Duration::from_secs(10),
        "fencing took {fenced_in:?} after the partition healed"
    );
}

/// A run whose claim the database lost while its process runs here (a failover that lost
/// the last commits: the row is `pending` again) and that the same guardian claims again
/// does not start a second process: the process that has it keeps it, and its end is
/// recorded on the row, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_claimed_again_while_its_process_runs_here_does_not_run_twice() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    // A long beat: the heartbeat would otherwise fence the process in the moment the row is
    // pending (a different story, told by the failover tests).
    let mut g = Guardian::start(
        &db,
        "g1",
        "listen = false\npoll_interval = \"100ms\"\nheartbeat_interval = \"20s\"\nlease = \"60s\"",
    );
    let d = dir.path().display();
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('long', $1)",
            &[&format!(
                "echo $$ >> {d}/starts; until [ -e {d}/go ]; do sleep 0.05; done"
            )],
        )
        .await
        .unwrap();
    let id = trigger(&client, "long").await;
    wait_started(&client, id).await;
    let starts = || {
        std::fs::read_to_string(dir.path().join("starts"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_for("the job's process to start", LONG, || starts() == 1).await;
    // The row as a primary that lost the claim's commit has it.
    client
        .execute(
            "UPDATE sisy.runs SET state = 'pending', host = NULL, claimed_at = NULL,
                    started_at = NULL, heartbeat_at = NULL WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    wait_for("the run claimed again, or a second process", LONG, || {
        starts() > 1
            || g.log()
                .contains("run claimed again while this guardian still has it")
    })
    .await;
    let state: String = client
        .query_one("SELECT state FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "running");
    std::fs::write(dir.path().join("go"), "").unwrap();
    assert_eq!(wait_finished(&client, id, LONG).await, "succeeded");
    assert_eq!(starts(), 1, "the job's process started twice");
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shim_spawner_loses_no_run() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    let dir = shared_dir();
    let flag = dir.path().join("go");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('waits', $1), ('quick', 'echo again')",
            &[&until_file(&flag)],
        )
        .await
        .unwrap();
    let id = trigger(&client, "waits").await;
    let shell = wait_started(&client, id).await;
    let guardian = g.pid().expect("the guardian runs");
    let spawner = spawner_of(guardian).expect("the guardian's shim spawner runs");
    assert_ne!(
        parent_of(shell),
        Some(guardian),
        "the shell's parent is its shim, not the guardian"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawner), Signal::SIGKILL).unwrap();
    wait_for("the spawner to be gone", LONG, || process_gone(spawner)).await;
    // The run's shim and job go on: the spawner holds nothing of a run once it has forked.
    assert!(!process_gone(shell), "the job died with the spawner");
    std::fs::write(&flag, "").unwrap();
    assert_eq!(wait_finished(&client, id, LONG).await, "succeeded");
    // The next run gets a new spawner.
    let next = trigger(&client, "quick").await;
    assert_eq!(wait_finished(&client, next, LONG).await, "succeeded");
    assert_eq!(crate::util::output_of(&client, next).await, "again\n");
    let again = spawner_of(guardian).expect("a new spawner runs");
    assert_ne!(again, spawner);
    assert!(g.log().contains("spawner"), "{}", g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_shim_spawner_holds_no_run_forever() {
    let (db, client) = migrated_db().await;
    let mut g = Guardian::start(&db, "g1", "");
    let dir = shared_dir();
    let marker = dir.path().join("started");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('quick', 'echo again'), ('marks', $1)",
            &[&format!("touch {}", marker.display())],
        )
        .await
        .unwrap();
    // A first run starts the spawner.
    let first = trigger(&client, "quick").await;
    assert_eq!(wait_finished(&client, first, LONG).await, "succeeded");
    let guardian = g.pid().expect("the guardian runs");
    let spawner = spawner_of(guardian).expect("the guardian's shim spawner runs");
    let read_by_shims = || -> u64 { shims_of(guardian).into_iter().map(bytes_read_by).sum() };
    let before = read_by_shims();
    // Frozen (a debugger, a careless SIGSTOP): it takes no message and forks no shim.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawner), Signal::SIGSTOP).unwrap();
    // A failed assertion must not leave it stopped: a stopped process ignores the SIGTERM
    // its guardian's end sends it, and would outlive the test.
    let _thaw = Thaw(spawner);
    let stalled = trigger(&client, "marks").await;
    let began = Instant::now();
    assert_eq!(wait_finished(&client, stalled, LONG).await, "failed");
    let waited = began.elapsed();
    let error: String = client
        .query_one("SELECT error FROM sisy.runs WHERE id = $1", &[&stalled])
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("did not start the job"), "{error}");
    assert!(
        waited < Duration::from_secs(20),
        "the stalled run was held {waited:?}"
    );
    // Let go, the spawner hands the run it held to a shim, which reads it and, the guardian
    // having given it up, does not start it: the shim is back waiting for a run (poll with
    // no timeout; it would have supervised a started job to its end first) with no marker.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawner), Signal::SIGCONT).unwrap();
    wait_for(
        "a shim to take the held run and be free again",
        LONG,
        || {
            let shims = shims_of(guardian);
            read_by_shims() > before && !shims.is_empty() && shims.into_iter().all(waits_for_a_run)
        },
    )
    .await;
    assert!(!marker.exists(), "a run given up on started later");
    // The spawner that stalled is replaced, not trusted again: the next run starts.
    let next = trigger(&client, "quick").await;
    assert_eq!(wait_finished(&client, next, LONG).await, "succeeded");
    assert_eq!(crate::util::output_of(&client, next).await, "again\n");
    wait_for("the frozen spawner to be gone", LONG, || {
        process_gone(spawner)
    })
    .await;
    assert_ne!(spawner_of(guardian), Some(spawner));
    g.stop();
}

/// Bytes process `pid` has read (`rchar` in /proc/PID/io; 0 once it is gone).
fn bytes_read_by(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether run shim `pid` is free: blocked in `poll` (syscall 7) with no timeout, where it
/// waits for its next run; while it supervises a job its polls have a deadline.
fn waits_for_a_run(pid: i32) -> bool {
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let fields: Vec<&str> = syscall.split_whitespace().collect();
    fields.first() == Some(&"7") && fields.get(3).is_some_and(|t| t.ends_with("ffffffff"))
}

/// Sends SIGCONT to a process when dropped (also when a test fails).
struct Thaw(i32);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

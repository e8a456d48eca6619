//! How a guardian ends and begins when things go wrong: a service of its own that dies, a
//! shutdown during a database outage, two processes started under one host name, a database
//! that accepts connections and never answers, and Ctrl-C on a CLI command. Real guardian
//! processes and real signals; every wait has a deadline.
//!
//! A service of the guardian dies only through a bug (a panic) — there is no real trigger to
//! pull — so those tests use the fault hook of debug builds: `SISY_TEST_FAULT=<service>:<panic|end>[:<file>]`
//! makes the named service panic or return once `<file>` exists (see `guardian::services`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pg::TestDb;
use crate::util::{
    Guardian, Proxy, migrated_db, process_gone, processes_with_env, shared_dir, sisy, trigger,
    wait_finished, wait_for, wait_started, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// A TCP port that accepts connections and never sends a byte: a database behind a network
/// that drops packets, or a hung server.
struct BlackHole {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        BlackHole {
            port,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=nowhere sslmode=disable",
            self.port
        )
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_whose_service_panics_stops_and_records_its_jobs_and_exits_non_zero() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let trigger_file = dir.path().join("fail-now");
    let fault = format!("listener:panic:{}", trigger_file.display());
    // A long grace: the jobs of a broken guardian are stopped at once, not after it.
    let mut g = Guardian::start_with_env(
        &db,
        "g1",
        "shutdown_grace = \"10m\"",
        &[("SISY_TEST_FAULT", &fault)],
    );
    client
        .batch_execute("INSERT INTO sisy.jobs (name, command) VALUES ('long', 'sleep 600')")
        .await
        .unwrap();
    let id = trigger(&client, "long").await;
    let pid = wait_started(&client, id).await;

    std::fs::write(&trigger_file, b"").unwrap();
    let began = Instant::now();
    let status = g.exit_within(LONG).await;
    let log = g.log();
    let status = status.unwrap_or_else(|| panic!("the guardian did not exit:\n{log}"));
    assert!(!status.success(), "exit status {status:?}:\n{log}");
    assert!(
        log.contains("guardian failed") && log.contains("listener"),
        "{log}"
    );
    eprintln!("listener panic to guardian exit: {:?}", began.elapsed());
    assert!(process_gone(pid), "the job outlived its guardian");
    let row = client
        .query_one("SELECT state, error FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap();
    let (state, error): (String, String) = (row.get(0), row.get(1));
    assert_eq!(state, "killed", "{error}");
    assert!(error.contains("listener"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_whose_service_returns_exits_non_zero_naming_it() {
    let (db, _client) = migrated_db().await;
    for service in ["dispatcher", "heartbeat", "reaper"] {
        let fault = format!("{service}:end");
        let mut g = Guardian::start_with_env(&db, service, "", &[("SISY_TEST_FAULT", &fault)]);
        let status = g.exit_within(LONG).await;
        let log = g.log();
        let status = status.unwrap_or_else(|| panic!("{service}: still running:\n{log}"));
        assert!(!status.success(), "{service}: {status:?}:\n{log}");
        assert!(
            log.contains("guardian failed") && log.contains(service),
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_supervising_a_run_is_recorded_on_the_run_and_ends_the_guardian() {
    let (db, client) = migrated_db().await;
    let mut g = Guardian::start_with_env(&db, "g1", "", &[("SISY_TEST_FAULT", "supervisor:panic")]);
    client
        .batch_execute("INSERT INTO sisy.jobs (name, command) VALUES ('once', 'true')")
        .await
        .unwrap();
    let id = trigger(&client, "once").await;
    let status = g.exit_within(LONG).await;
    let log = g.log();
    let status = status.unwrap_or_else(|| panic!("the guardian did not exit:\n{log}"));
    assert!(!status.success(), "{status:?}:\n{log}");
    let row = client
        .query_one("SELECT state, error FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap();
    let (state, error): (String, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(state, "failed", "{error:?}\n{log}");
    assert!(
        error
            .as_deref()
            .unwrap_or("")
            .contains("supervising this run"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_an_outage_is_bounded_and_every_result_reaches_the_spool() {
    let (db, client) = migrated_db().await;
    let proxy = Proxy::start(crate::pg::server());
    let tag = format!("outage-shutdown-{}", db.name);
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap, kill_grace, env) VALUES
                ('rep', 'trap \"\" TERM; while :; do sleep 1; done', 'replace', '10 minutes',
                 jsonb_build_object('FAULT_TAG', $1::text)),
                ('work', 'sleep 600', 'forbid', '10 seconds', jsonb_build_object('FAULT_TAG', $1::text))",
            &[&tag],
        )
        .await
        .unwrap();
    client
        .batch_execute("UPDATE sisy.jobs SET pool = 'p1' WHERE name = 'work'")
        .await
        .unwrap();
    // g2 runs the run to be replaced, which ignores SIGTERM for its 10-minute kill_grace; its
    // long lease keeps it from judging g1 while g1 is away.
    let g2 = Guardian::start(&db, "g2", "capacity = 1\nlease = \"60s\"");
    let victim = trigger(&client, "rep").await;
    wait_started(&client, victim).await;
    let mut g1 = Guardian::start(
        &proxy.db(&db),
        "g1",
        "pools = [\"default\", \"p1\"]\nshutdown_grace = \"2s\"",
    );
    let work = trigger(&client, "work").await;
    wait_started(&client, work).await;
    // g1 claims the replacing run and waits for the victim to end.
    let waiting = trigger(&client, "rep").await;
    wait_until(
        &client,
        "g1 to claim the replacing run and wait for its victim",
        LONG,
        || {
            format!(
                "SELECT (SELECT host = 'g1' AND started_at IS NULL FROM sisy.runs WHERE id = {waiting})
                    AND (SELECT kill_requested_at IS NOT NULL FROM sisy.runs WHERE id = {victim})"
            )
        },
        |ok: bool| ok,
    )
    .await;

    proxy.cut();
    g1.signal(Signal::SIGTERM);
    let began = Instant::now();
    let status = g1.exit_within(Duration::from_secs(30)).await;
    let took = began.elapsed();
    let log = g1.log();
    assert!(status.is_some(), "no exit 30 s after SIGTERM:\n{log}");
    eprintln!("shutdown during an outage took {took:?} (shutdown_grace 2 s)");
    assert!(took < Duration::from_secs(20), "took {took:?}:\n{log}");
    let spooled: Vec<String> = std::fs::read_dir(g1.dir.path().join("spool"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for id in [waiting, work] {
        assert!(
            spooled.contains(&format!("{id}.json")),
            "run {id} not in the spool {spooled:?}:\n{log}"
        );
    }

    // g2 goes; its victim ignores SIGTERM, so it is killed here.
    drop(g2);
    for (pid, _) in processes_with_env("FAULT_TAG", &tag) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    proxy.heal();
    g1.restart();
    for (id, error) in [
        (waiting, "guardian shutdown before the run started"),
        (work, "guardian shutdown"),
    ] {
        assert_eq!(wait_finished(&client, id, LONG).await, "killed");
        let got: String = client
            .query_one("SELECT error FROM sisy.runs WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, error);
    }
}

/// The statement a guardian registers with, as in the binary.
const REGISTER: &str = include_str!("../../sql/queries/hosts_register.sql");

async fn register(client: &tokio_postgres::Client, name: &str) -> tokio_postgres::Row {
    let pools = vec!["default".to_string()];
    client
        .query_one(REGISTER, &[&name, &pools, &"test", &30.0f64, &4i32])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registrations_of_one_host_name_interleaved_cannot_both_win() {
    let (db, client) = migrated_db().await;
    let first = db.connect().await;
    let second = Arc::new(db.connect().await);
    let second_pid: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // The first registers in a transaction it has not committed yet...
    first.batch_execute("BEGIN").await.unwrap();
    let row = register(&first, "twin").await;
    assert_eq!(row.get::<_, Option<bool>>("draining"), Some(false));
    // ...the second, which saw no row, waits on the first's insert...
    let racer = second.clone();
    let late = tokio::spawn(async move { register(&racer, "twin").await });
    wait_until(
        &client,
        "the second registration to wait on the first",
        LONG,
        || format!("SELECT coalesce((SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = {second_pid}), false)"),
        |waiting: bool| waiting,
    )
    .await;
    let started: chrono::DateTime<chrono::Utc> = first
        .query_one("SELECT started_at FROM sisy.hosts WHERE name = 'twin'", &[])
        .await
        .unwrap()
        .get(0);
    first.batch_execute("COMMIT").await.unwrap();
    // ...and must find the lease held, not take it over.
    let row = late.await.unwrap();
    assert_eq!(
        row.get::<_, Option<bool>>("draining"),
        None,
        "the second registration won while the first held the lease"
    );
    let now: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT started_at FROM sisy.hosts WHERE name = 'twin'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(now, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guardians_started_at_once_with_one_host_name_do_not_both_run() {
    let (db, _client) = migrated_db().await;
    let a = Guardian::start(&db, "twin", "");
    let b = Guardian::start(&db, "twin", "");
    let started = |g: &Guardian| g.log().contains("guardian started");
    let waits = |g: &Guardian| g.log().contains("another guardian holds this host's lease");
    wait_for("one guardian to start and the other to wait", LONG, || {
        (started(&a) && waits(&b)) || (started(&b) && waits(&a))
    })
    .await;
    assert!(
        !(started(&a) && started(&b)),
        "both started:\n{}\n{}",
        a.log(),
        b.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_whose_host_name_was_taken_over_while_it_was_paused_stops() {
    let (db, client) = migrated_db().await;
    let mut first = Guardian::start(&db, "twin", "");
    wait_for("the first to start", LONG, || {
        first.log().contains("guardian started")
    })
    .await;
    first.signal(Signal::SIGSTOP);
    wait_until(
        &client,
        "the paused guardian's lease to lapse",
        LONG,
        || "SELECT coalesce((SELECT lease_until < now() FROM sisy.hosts WHERE name = 'twin'), false)".into(),
        |lapsed: bool| lapsed,
    )
    .await;
    // A second process under the same name (another state_dir) may take the name now (a
    // long lease: it is paused below and must keep the name meanwhile)...
    let second = Guardian::start(&db, "twin", "lease = \"60s\"");
    wait_for("the second to start", LONG, || {
        second.log().contains("guardian started")
    })
    .await;
    let holder = "SELECT started_at FROM sisy.hosts WHERE name = 'twin'";
    let taken: chrono::DateTime<chrono::Utc> = client.query_one(holder, &[]).await.unwrap().get(0);
    // ...and the first, resumed, must not act as that host too: it stops. The second is
    // paused meanwhile, so that no beat of its own can hide what the first's exit did to
    // the host row.
    second.signal(Signal::SIGSTOP);
    first.signal(Signal::SIGCONT);
    let status = first.exit_within(Duration::from_secs(30)).await;
    let log = first.log();
    let status = status.unwrap_or_else(|| panic!("the resumed guardian goes on:\n{log}"));
    assert!(!status.success(), "{status:?}:\n{log}");
    assert!(log.contains("took over its host name"), "{log}");
    // Stopping, the first gave up no lease: the one on the row is the second's.
    let held: bool = client
        .query_one(
            "SELECT lease_until > now() FROM sisy.hosts WHERE name = 'twin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    second.signal(Signal::SIGCONT);
    assert!(
        held,
        "the exiting guardian released the lease of the process that holds the name:\n{log}"
    );
    let now: chrono::DateTime<chrono::Utc> = client.query_one(holder, &[]).await.unwrap().get(0);
    assert_eq!(now, taken, "the host row changed hands again");
    assert!(
        !second.log().contains("guardian failed"),
        "{}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_row_deleted_by_hand_is_announced_again_by_the_same_process() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    wait_for("the guardian to start", LONG, || {
        g.log().contains("guardian started")
    })
    .await;
    client
        .batch_execute("DELETE FROM sisy.hosts WHERE name = 'g1'")
        .await
        .unwrap();
    let back: chrono::DateTime<chrono::Utc> = wait_until(
        &client,
        "the host row to be announced again",
        LONG,
        || "SELECT coalesce((SELECT last_seen FROM sisy.hosts WHERE name = 'g1'), 'epoch')".into(),
        |at: chrono::DateTime<chrono::Utc>| at.timestamp() > 0,
    )
    .await;
    // Announced under this process's registration, so its heartbeats renew it.
    wait_until(
        &client,
        "a heartbeat to renew the announced row",
        LONG,
        || "SELECT last_seen FROM sisy.hosts WHERE name = 'g1'".into(),
        |at: chrono::DateTime<chrono::Utc>| at > back,
    )
    .await;
    assert!(!g.log().contains("guardian failed"), "{}", g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_against_a_database_that_never_answers_retries_and_stops_on_sigterm() {
    let hole = BlackHole::start().await;
    let db = TestDb {
        name: "nowhere".into(),
        url: hole.url(),
    };
    let mut g = Guardian::start(&db, "g1", "");
    wait_for("the guardian to try again", LONG, || hole.accepted() >= 2).await;
    assert!(g.log().contains("database unreachable"), "{}", g.log());
    g.signal(Signal::SIGTERM);
    let began = Instant::now();
    let status = g.exit_within(Duration::from_secs(10)).await;
    assert!(status.is_some(), "no exit after SIGTERM:\n{}", g.log());
    eprintln!("SIGTERM to exit during start-up: {:?}", began.elapsed());
    assert_eq!(status.unwrap().code(), Some(0), "{}", g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_a_cli_command_at_once() {
    let hole = BlackHole::start().await;
    let mut child = sisy()
        .args(["--database-url", &hole.url(), "jobs", "list"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the command to connect", LONG, || hole.accepted() >= 1).await;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let began = Instant::now();
    let mut status = None;
    wait_for(
        "the command to stop after SIGINT",
        Duration::from_secs(5),
        || {
            status = child.try_wait().unwrap();
            status.is_some()
        },
    )
    .await;
    eprintln!("SIGINT to exit: {:?}", began.elapsed());
    use std::os::unix::process::ExitStatusExt;
    let status = status.unwrap();
    assert!(
        status.signal() == Some(Signal::SIGINT as i32) || status.code() == Some(130),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_command_against_a_database_that_never_answers_gives_up_after_connect_timeout() {
    let hole = BlackHole::start().await;
    let url = format!("{} connect_timeout=1", hole.url());
    let began = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        sisy()
            .args(["--database-url", &url, "jobs", "list"])
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("the command still waits 20 s later")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("gave up after {:?}", began.elapsed());
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no answer within"), "{stderr}");
    assert!(hole.accepted() >= 1);
}

/// A user database (LDAP, sssd) that never answers: the lookup of a run's user hangs. It runs
/// on a blocking thread with a bound, so each run fails with a sentence and a retry allowed,
/// and the guardian keeps beating. The hang is the debug builds' `user-lookup:hang` fault
/// (`run::users`): a real NSS hang would need the host's nsswitch.conf changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_lookup_that_hangs_fails_the_run_for_a_retry_and_the_guardian_keeps_beating() {
    let (db, client) = migrated_db().await;
    let mut g = Guardian::start_with_env(&db, "g1", "", &[("SISY_TEST_FAULT", "user-lookup:hang")]);
    client
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, max_retries, retry_delay) VALUES
                ('a', 'true', 1, '1 hour'), ('b', 'true', 1, '1 hour')",
        )
        .await
        .unwrap();
    // Two at once: as many as the guardian has async workers.
    let ids = [trigger(&client, "a").await, trigger(&client, "b").await];
    for id in ids {
        let state = wait_finished(&client, id, Duration::from_secs(30)).await;
        let row = client
            .query_one(
                "SELECT error, no_retry FROM sisy.runs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let (error, no_retry): (Option<String>, bool) = (row.get(0), row.get(1));
        assert_eq!(state, "failed", "{error:?}\n{}", g.log());
        let error = error.unwrap_or_default();
        assert!(
            error.contains("looking up user") && error.contains("does not answer"),
            "{error}"
        );
        assert!(!no_retry, "a lookup that timed out is final: {error}");
    }
    let retries: i64 = client
        .query_one("SELECT count(*) FROM sisy.runs WHERE attempt = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(retries, 2, "no retry was scheduled");
    // Still beating: last_seen moves on twice more and the lease stays ahead of now.
    let first: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT last_seen FROM sisy.hosts WHERE name = 'g1'", &[])
        .await
        .unwrap()
        .get(0);
    wait_until(
        &client,
        "g1 to keep beating",
        LONG,
        || {
            format!(
                "SELECT last_seen > '{}'::timestamptz + interval '2 seconds' AND lease_until > now()
                 FROM sisy.hosts WHERE name = 'g1'",
                first.to_rfc3339()
            )
        },
        |ok: bool| ok,
    )
    .await;
    assert!(
        g.exit_within(Duration::ZERO).await.is_none(),
        "the guardian exited:\n{}",
        g.log()
    );
}

//! How a guardian and the `sisy` binary begin and end when things go wrong: two processes
//! started under one host name, and Ctrl-C on a CLI command that waits on a database that
//! accepts connections and never answers. Real processes and real signals; every wait has a
//! deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::{Guardian, migrated_db, sisy, wait_for, wait_until};

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

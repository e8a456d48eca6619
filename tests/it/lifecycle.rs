//! How the `sisy` binary begins and ends when things go wrong: Ctrl-C on a CLI command that
//! waits on a database that accepts connections and never answers. Real processes and real
//! signals; every wait has a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::{sisy, wait_for};

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

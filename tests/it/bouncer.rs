//! A real PgBouncer (`/usr/sbin/pgbouncer`) in `pool_mode = transaction` in front of a test
//! cluster: the connection pooler of a large fleet, which hands each transaction (or each
//! statement outside one) to whichever server connection is free, and keeps no prepared
//! statements (1.18 does not track them). Its server connections are used in turn
//! (`server_round_robin`), so consecutive transactions of one client land on different
//! server connections even when the test is quiet, as they do in a busy fleet.
//!
//! It refuses to run as root, so it runs as the cluster's owner (like the postmaster, see
//! `pg`), from a directory of its own inside the cluster's, listening on 127.0.0.1 on a free
//! port; it reaches the cluster through its Unix socket. Its life is tied to the test
//! process the way the postmaster's is (PR_SET_PDEATHSIG from a long-lived thread), and it
//! is killed when dropped. [`Bouncer::stop`] and [`Bouncer::start`] take it down and bring
//! it back on the same port (a pooler outage).

use std::fs;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::pg::{self, TestDb};

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// How long PgBouncer may take to accept connections.
const DEADLINE: Duration = Duration::from_secs(20);

pub struct Bouncer {
    pub port: u16,
    dir: std::path::PathBuf,
    server: &'static pg::Server,
    child: Mutex<Option<Child>>,
}

impl Bouncer {
    /// A PgBouncer in transaction pooling mode in front of the shared cluster.
    pub fn start_shared() -> Bouncer {
        Bouncer::launch(pg::server())
    }

    fn launch(server: &'static pg::Server) -> Bouncer {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let index = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = server.socket_dir.join(format!("bouncer-{index}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        if let Some((uid, gid)) = server.run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        // Trust: PgBouncer still wants the user listed.
        fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        let mut port = 30_000 + (std::process::id() % 10_000) as u16 + (index as u16) * 7;
        for _ in 0..20 {
            let bouncer = Bouncer {
                port,
                dir: dir.clone(),
                server,
                child: Mutex::new(None),
            };
            match bouncer.try_start() {
                Ok(()) => return bouncer,
                Err(e) if e.contains("Address already in use") => port += 1,
                Err(e) => panic!("pgbouncer did not start: {e}"),
            }
        }
        panic!("pgbouncer found no free port")
    }

    fn write_config(&self) {
        let config = format!(
            "[databases]\n\
             * = host={socket} port={pgport}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = transaction\n\
             max_client_conn = 500\n\
             default_pool_size = 20\n\
             server_round_robin = 1\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\n\
             admin_users = postgres\n",
            socket = self.server.socket_dir.display(),
            pgport = self.server.port,
            port = self.port,
            dir = self.dir.display(),
        );
        fs::write(self.dir.join("pgbouncer.ini"), config).unwrap();
    }

    /// Starts PgBouncer (again) on its port; waits until it answers. The error is the log's
    /// tail when it does not.
    fn try_start(&self) -> Result<(), String> {
        self.write_config();
        let log = self.dir.join("pgbouncer.log");
        let from = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(PGBOUNCER);
        cmd.arg(self.dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.server.as_cluster_owner(&mut cmd);
        let child = pg::spawn_from_long_lived_thread(cmd)
            .map_err(|e| format!("cannot run {PGBOUNCER} ({e}): install pgbouncer"))?;
        *self.child.lock().unwrap() = Some(child);
        let tail = || {
            let text = fs::read(&log).unwrap_or_default();
            String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned()
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                *self.child.lock().unwrap() = None;
                return Err(format!("pgbouncer exited with {status}:\n{}", tail()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && tail().contains("process up")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("pgbouncer not up after {DEADLINE:?}:\n{}", tail()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `TestDb` for `db` that goes through PgBouncer.
    pub fn db(&self, db: &TestDb) -> TestDb {
        TestDb {
            name: db.name.clone(),
            url: format!(
                "host=127.0.0.1 port={} user=postgres dbname={}",
                self.port, db.name
            ),
        }
    }

    /// The client connections PgBouncer holds for database `name` now (its admin console's
    /// `SHOW CLIENTS`; this connection to the console is not one of them).
    pub async fn clients_of(&self, name: &str) -> usize {
        let url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=pgbouncer",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let rows = client.simple_query("SHOW CLIENTS").await.unwrap();
        rows.iter()
            .filter(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get("database") == Some(name),
                _ => false,
            })
            .count()
    }

    /// Kills PgBouncer (SIGTERM: immediate shutdown, every client connection cut).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if pg::wait_for_exit(&mut child, DEADLINE).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts it again on the same port.
    pub fn start(&self) {
        self.try_start()
            .unwrap_or_else(|e| panic!("pgbouncer did not start again: {e}"));
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

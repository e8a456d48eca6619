//! A real PgBouncer (`/usr/sbin/pgbouncer`) in `pool_mode = transaction` in front of the
//! benchmark's cluster, sized for a fleet: `max_client_conn` for every guardian's
//! connections, `default_pool_size` for the server connections they share. Like the tests'
//! (`tests/it/bouncer.rs`) it runs as the cluster's owner (it refuses root), from a
//! directory of its own inside the cluster's, on 127.0.0.1, reaching the cluster through its
//! Unix socket, and dies with the benchmark (PR_SET_PDEATHSIG) or when dropped.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::pg::{self, Server};

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
const DEADLINE: Duration = Duration::from_secs(20);

pub struct Bouncer {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Child,
}

impl Bouncer {
    /// Starts PgBouncer for `clients` client connections sharing `server_connections`.
    pub fn start(
        server: &Server,
        name: &str,
        clients: usize,
        server_connections: usize,
    ) -> Result<Bouncer> {
        let dir = server.socket_dir.join(format!("bouncer-{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir)?;
        if let Some((uid, gid)) = server.run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        // Trust: PgBouncer still wants the user listed.
        fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n")?;
        let mut port = 40_000 + (std::process::id() % 10_000) as u16;
        for _ in 0..20 {
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
                 max_client_conn = {clients}\n\
                 default_pool_size = {server_connections}\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {dir}/pgbouncer.log\n\
                 admin_users = postgres\n",
                socket = server.socket_dir.display(),
                pgport = server.port,
                dir = dir.display(),
            );
            fs::write(dir.join("pgbouncer.ini"), config)?;
            let log = dir.join("pgbouncer.log");
            let from = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let mut cmd = Command::new(PGBOUNCER);
            cmd.arg(dir.join("pgbouncer.ini"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            server.as_cluster_owner(&mut cmd);
            let mut child = pg::spawn_from_long_lived_thread(cmd)
                .map_err(|e| anyhow::anyhow!("cannot run {PGBOUNCER} ({e}): install pgbouncer"))?;
            let tail = || {
                let text = fs::read(&log).unwrap_or_default();
                String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned()
            };
            let began = Instant::now();
            let outcome = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(format!("pgbouncer exited with {status}:\n{}", tail()));
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && tail().contains("process up")
                {
                    break Ok(());
                }
                if began.elapsed() > DEADLINE {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("pgbouncer not up after {DEADLINE:?}:\n{}", tail()));
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            match outcome {
                Ok(()) => return Ok(Bouncer { port, dir, child }),
                Err(e) if e.contains("Address already in use") => port += 1,
                Err(e) => bail!("{e}"),
            }
        }
        bail!("pgbouncer found no free port")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The URL of database `name` through PgBouncer.
    pub fn url(&self, name: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={name}",
            self.port
        )
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // SAFETY: signalling our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if pg::wait_for_exit(&mut self.child, DEADLINE).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

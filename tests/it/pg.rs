//! A throwaway PostgreSQL for the integration tests: one cluster per test process, started
//! lazily by the first test that asks for it, and one fresh database per test.
//!
//! This module owns finding the server binaries, `initdb`, running the postmaster (as the
//! `postgres` user when we are root, because initdb and postgres refuse to run as root),
//! tying the postmaster's life to the test process, and stop/start/restart for fault tests.
//! It does not own schema or migrations (tests apply what they need), connection pools,
//! TCP (the cluster listens on a unix socket only, unless `start_private_with` is given
//! `listen_addresses`), or dropping test databases: the whole cluster directory is deleted
//! instead, which is faster and cannot be forgotten.
//!
//! Cleanup, in three layers, because a test process can end in three ways:
//!
//! ```text
//!   normal exit / exit(101)  -> atexit hook: SIGQUIT the postmaster, reap it, rm -r its dir
//!   SIGKILL, abort, OOM      -> kernel: PR_SET_PDEATHSIG sends the postmaster SIGQUIT
//!   (dir left behind)        -> next run: sisy-pg-<pid>-<n> with no /proc/<pid> is removed
//! ```
//!
//! PDEATHSIG fires when the *thread* that forked the child exits, not the process, and test
//! threads come and go. So every postmaster, including the ones `restart` starts, is spawned
//! by one thread that lives as long as the process (see `spawn_from_long_lived_thread`).
//!
//! All paths the `postgres` user touches live in one directory, `/dev/shm/sisy-pg-<pid>-<n>`
//! or, when /dev/shm is missing or small (Docker gives it 64 MB), `/tmp/sisy-pg-<pid>-<n>`:
//! the `postgres` user may not be allowed to traverse the repository, and the socket path
//! must stay short (unix socket paths max out near 107 bytes). /dev/shm is preferred because
//! CREATE DATABASE creates some 300 files: on tmpfs it takes ~25 ms, on a disk busy with
//! compilers we measured ~300 ms, nearly all of it in `openat`.

// Each test module uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio_postgres::NoTls;

/// How long the server may take to accept connections (or to shut down) before we give up.
const DEADLINE: Duration = Duration::from_secs(30);

/// A database of its own for one test. Nothing drops it: it dies with the cluster.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// The database name, `t_<n>`.
    pub name: String,
    /// A libpq key=value string (`host=/dev/shm/sisy-pg-… port=… user=postgres dbname=t_3`) that
    /// tokio-postgres, psql and a `sisy` subprocess all accept.
    pub url: String,
}

impl TestDb {
    /// Connects with tokio-postgres and drives the connection on a spawned task.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e:#}", self.url));
        // The error, if any, surfaces on the client's next query; tests that kill the
        // server expect it, so there is nothing useful to do with it here.
        tokio::spawn(async move { drop(connection.await) });
        client
    }
}

/// The shared cluster, or why it could not start. The error is kept rather than panicking
/// inside the initialiser, so one failed start fails every test at once with the same
/// message instead of each test retrying for 30 s.
static SHARED: OnceLock<Result<Server, String>> = OnceLock::new();

/// The cluster shared by every test in this process, started on first use.
pub fn server() -> &'static Server {
    let started = SHARED.get_or_init(|| {
        let server = Server::launch(&[]).map_err(|e| format!("{e:#}"))?;
        // SAFETY: registering a plain extern "C" fn that only touches statics.
        unsafe { libc::atexit(stop_shared_at_exit) };
        Ok(server)
    });
    match started {
        Ok(server) => server,
        Err(message) => panic!("{message}"),
    }
}

/// A fresh, empty database in the shared cluster. Blocks for tens of milliseconds (the
/// first call also starts the cluster, about a second); fine inside `#[tokio::test]`, as the work runs on its own
/// thread and runtime.
pub fn fresh_database() -> TestDb {
    server().fresh_database()
}

/// How `Server::stop_with` shuts the postmaster down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT, like `pg_ctl stop -m fast`: sessions are cut, a clean shutdown checkpoint.
    Fast,
    /// SIGQUIT, like `pg_ctl stop -m immediate`: a crash; the next start runs recovery.
    Immediate,
}

/// One running (or stopped) cluster. Restarts keep the socket directory and port, so a
/// `TestDb::url` stays valid across them.
pub struct Server {
    pub bin_dir: PathBuf,
    /// Holds the socket `.s.PGSQL.<port>`, the data directory and the log.
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub port: u16,
    /// Whose uid and gid the server runs under; `None` when we are not root.
    pub(crate) run_as: Option<(libc::uid_t, libc::gid_t)>,
    /// `None` while stopped.
    postmaster: Mutex<Option<Child>>,
    /// The postmaster's pid, 0 while stopped: the atexit hook must not take a lock that
    /// another thread may hold while the process exits.
    postmaster_pid: AtomicI32,
    next_db: AtomicU32,
    /// Server settings given after the defaults (so they win): see `start_private_with`.
    settings: Vec<String>,
}

impl Server {
    /// A cluster of its own, for a test that stops or restarts the server and so must not
    /// disturb the tests sharing `server()`. Costs about a second; removed on drop.
    pub fn start_private() -> Server {
        Server::start_private_with(&[])
    }

    /// A private cluster whose `settings` (`name=value`, as for `postgres -c`) override the
    /// test defaults: the benchmarks use it for TCP on loopback, autovacuum and durability
    /// as in production, and `pg_stat_statements`.
    pub fn start_private_with(settings: &[&str]) -> Server {
        Server::launch(settings).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The libpq key=value string for `dbname` in this cluster.
    pub fn url_for(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname}",
            self.socket_dir.display(),
            self.port
        )
    }

    pub fn fresh_database(&self) -> TestDb {
        let name = format!("t_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let admin = self.url_for("postgres");
        let create = format!("CREATE DATABASE {name}");
        on_own_runtime(async {
            let (client, connection) = tokio_postgres::connect(&admin, NoTls).await?;
            let connection = tokio::spawn(connection);
            client.batch_execute(&create).await?;
            // Close politely so the server log is not littered with "unexpected EOF".
            drop(client);
            let _ = connection.await;
            Ok::<_, tokio_postgres::Error>(())
        })
        .unwrap_or_else(|e| panic!("create test database {name} via {admin}: {e:#}"));
        TestDb {
            url: self.url_for(&name),
            name,
        }
    }

    pub fn is_running(&self) -> bool {
        self.postmaster_mut().is_some()
    }

    /// Stops like `pg_ctl stop -m fast`. A no-op when already stopped.
    pub fn stop(&self) {
        self.stop_with(StopMode::Fast)
    }

    pub fn stop_with(&self, mode: StopMode) {
        if !self.halt(mode) {
            panic!(
                "postgres took over {DEADLINE:?} to stop; killed it\n{}",
                self.log_tail(0)
            );
        }
    }

    /// Starts the server again on the same socket and port and waits until it accepts
    /// connections. A no-op when already running.
    pub fn start(&self) {
        if let Err(e) = self.try_start() {
            panic!("{e:#}");
        }
    }

    /// Like `pg_ctl restart -m fast`.
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    fn launch(settings: &[&str]) -> Result<Server> {
        static NEXT_SERVER: AtomicU32 = AtomicU32::new(0);
        let bin_dir = find_bin_dir()?;
        let run_as = cluster_owner()?;
        remove_stale_clusters();

        let index = NEXT_SERVER.fetch_add(1, Ordering::Relaxed);
        let socket_dir = scratch_root().join(format!("sisy-pg-{}-{index}", std::process::id()));
        // Left behind by an earlier process that had our pid.
        let _ = fs::remove_dir_all(&socket_dir);
        // 0700: trust auth means whoever reaches the socket is superuser.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&socket_dir)
            .with_context(|| format!("create {}", socket_dir.display()))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", socket_dir.display()))?;
        }

        // Derived from the pid so concurrent test processes differ; the socket directory is
        // private anyway, so a clash is unlikely even with a shared port number.
        let first_port = 20_000 + (std::process::id() % 20_000) as u16 + index as u16;
        let mut server = Server {
            data_dir: socket_dir.join("data"),
            log_path: socket_dir.join("postgres.log"),
            socket_dir,
            bin_dir,
            port: first_port,
            run_as,
            postmaster: Mutex::new(None),
            postmaster_pid: AtomicI32::new(0),
            next_db: AtomicU32::new(0),
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        // From here on, an error drops `server`, which removes the directory.
        server.initdb()?;
        loop {
            match server.try_start() {
                Ok(()) => return Ok(server),
                Err(e) if server.port < first_port + 4 && port_taken(&e) => server.port += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn initdb(&self) -> Result<()> {
        let mut cmd = Command::new(self.bin_dir.join("initdb"));
        cmd.arg("-D").arg(&self.data_dir);
        cmd.args("-A trust -U postgres --no-sync -E UTF8 --locale=C".split(' '));
        self.as_cluster_owner(&mut cmd);
        let out = cmd.output().context("run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn try_start(&self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        // Errors quote only what this start wrote, not earlier runs.
        let log_start = log.metadata()?.len();
        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string());
        for setting in [
            "listen_addresses=".to_string(),
            format!("unix_socket_directories={}", self.socket_dir.display()),
            // Durability buys nothing in a cluster that is deleted after the run.
            "fsync=off".into(),
            "synchronous_commit=off".into(),
            "full_page_writes=off".into(),
            "max_connections=300".into(),
            "shared_buffers=16MB".into(),
            // Each CREATE DATABASE writes its 7 MB template to WAL; on tmpfs WAL is RAM, so
            // checkpoint (cheap without fsync) often enough to recycle it.
            "max_wal_size=256MB".into(),
            // Tests are short; vacuuming hundreds of tiny databases only steals CPU.
            "autovacuum=off".into(),
        ]
        .iter()
        .chain(&self.settings)
        {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.as_cluster_owner(&mut cmd);
        let child = spawn_from_long_lived_thread(cmd).context("spawn postgres")?;
        self.postmaster_pid
            .store(child.id() as i32, Ordering::SeqCst);
        *self.postmaster_mut() = Some(child);
        self.wait_until_ready(log_start)
    }

    /// Polls with a real connection: only that proves the socket, auth and startup are done.
    fn wait_until_ready(&self, log_start: u64) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        let mut config: tokio_postgres::Config = self.url_for("postgres").parse()?;
        config.connect_timeout(Duration::from_secs(2));
        let mut backoff = Duration::from_millis(2);
        on_own_runtime(async {
            loop {
                let error = match config.connect(NoTls).await {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                };
                if let Some(status) = self.postmaster_exited() {
                    bail!(
                        "postgres exited with {status} while starting\n{}",
                        self.log_tail(log_start)
                    );
                }
                if Instant::now() > deadline {
                    self.halt(StopMode::Immediate);
                    bail!(
                        "postgres not accepting connections after {DEADLINE:?} ({error})\n{}",
                        self.log_tail(log_start)
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        })
    }

    /// Signals the postmaster and reaps it; false if it had to be SIGKILLed after DEADLINE.
    fn halt(&self, mode: StopMode) -> bool {
        let Some(mut child) = self.postmaster_mut().take() else {
            return true;
        };
        self.postmaster_pid.store(0, Ordering::SeqCst);
        let signal = match mode {
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        };
        // SAFETY: signalling our own, not yet reaped, child.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        if wait_for_exit(&mut child, DEADLINE).is_some() {
            return true;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn postmaster_exited(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.postmaster_mut();
        let status = guard.as_mut()?.try_wait().ok().flatten()?;
        *guard = None;
        self.postmaster_pid.store(0, Ordering::SeqCst);
        Some(status)
    }

    fn postmaster_mut(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        // A panicking test must not take the server down for everyone else.
        self.postmaster
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last lines the server logged since byte `from`, for error messages.
    fn log_tail(&self, from: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let _ = file.seek(SeekFrom::Start(from));
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- {} (tail) ---\n{tail}", self.log_path.display())
    }

    /// Runs `cmd` as the cluster owner, in a directory it can read, and makes it receive
    /// SIGQUIT (postgres: immediate shutdown) when the spawning thread dies.
    pub(crate) fn as_cluster_owner(&self, cmd: &mut Command) {
        // initdb resolves its own path relative to the working directory, which must be
        // readable by the postgres user; the repository may not be.
        cmd.current_dir(&self.socket_dir);
        let run_as = self.run_as;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: runs between fork and exec; only async-signal-safe syscalls, no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if let Some((uid, gid)) = run_as
                    && (libc::setgroups(1, &gid) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(io::Error::last_os_error());
                }
                // After setuid: changing credentials clears the death signal.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // If we died before prctl, the signal will never come: refuse to start.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
}

impl Drop for Server {
    /// Only private servers are dropped; the shared one is cleaned up by the atexit hook.
    fn drop(&mut self) {
        self.halt(StopMode::Immediate);
        let _ = fs::remove_dir_all(&self.socket_dir);
    }
}

/// Stops the shared cluster and deletes its directory when the process exits normally
/// (the test harness ends with `exit`, which runs atexit hooks, also when tests failed).
extern "C" fn stop_shared_at_exit() {
    let Some(Ok(server)) = SHARED.get() else {
        return;
    };
    let pid = server.postmaster_pid.swap(0, Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: pid is our unreaped child; waitpid with WNOHANG never blocks.
        unsafe {
            libc::kill(pid, libc::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut status = 0;
            while libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    let _ = fs::remove_dir_all(&server.socket_dir);
}

/// Spawns `cmd` from a thread that never exits, so a PR_SET_PDEATHSIG child is signalled
/// when the process dies rather than when some test thread finishes. A tiny service: it
/// takes commands from a channel and sends back the spawned child.
pub(crate) fn spawn_from_long_lived_thread(cmd: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: LazyLock<mpsc::Sender<Request>> = LazyLock::new(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop ends only with the process.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the pg-spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    SPAWNER
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("pg-spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("pg-spawner thread is gone"))?
}

/// Runs a future to completion on a new thread with its own runtime, so that sync callers
/// and callers inside a tokio runtime (where `block_on` would panic) can both use it.
fn on_own_runtime<F: Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        let runner = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a tokio runtime")
                .block_on(future)
        });
        runner
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

pub(crate) fn wait_for_exit(
    child: &mut Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    let mut backoff = Duration::from_millis(1);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

fn port_taken(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}");
    text.contains("could not create lock file") || text.contains("Address already in use")
}

/// `$SISY_PG_BINDIR`, else the newest /usr/lib/postgresql/*/bin, else `pg_config --bindir`.
fn find_bin_dir() -> Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    let missing = || {
        anyhow!(
            "PostgreSQL server binaries not found: install postgresql (apt-get install -y postgresql)"
        )
    };
    if let Some(dir) = std::env::var_os("SISY_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(missing()).context(format!("SISY_PG_BINDIR={}", dir.display()))
        };
    }
    let version = |dir: &Path| -> Vec<u32> {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        name.split('.')
            .map(|part| part.parse().unwrap_or(0))
            .collect()
    };
    let mut debian: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| has_server(&dir.join("bin")))
        .collect();
    debian.sort_by_key(|dir| version(dir));
    if let Some(newest) = debian.pop() {
        return Ok(newest.join("bin"));
    }
    // pg_config alone may come from the client or -dev package, so check for the server.
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    from_pg_config
        .filter(|dir| has_server(dir))
        .ok_or_else(missing)
}

/// The uid and gid to run the server as: the `postgres` user when we are root, else us.
fn cluster_owner() -> Result<Option<(libc::uid_t, libc::gid_t)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .context("look up the postgres user")?
        .context("we are root and there is no postgres user to run the server as: install postgresql (it creates one) or run the tests as a normal user")?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// Where cluster directories go: /dev/shm when it has room for a few hundred test databases
/// (7 MB each, and they are only deleted with the cluster), else /tmp. See the module doc.
fn scratch_root() -> PathBuf {
    const ROOM: u64 = 2 << 30; // 2 GiB
    let shm_free = nix::sys::statvfs::statvfs("/dev/shm")
        .map(|fs| fs.blocks_available() * fs.fragment_size())
        .unwrap_or(0);
    PathBuf::from(if shm_free >= ROOM { "/dev/shm" } else { "/tmp" })
}

/// Removes sisy-pg-<pid>-<n> directories whose process is gone: left by a test run that was
/// killed (its postmaster died with it by PDEATHSIG, but the files stay).
fn remove_stale_clusters() {
    // Without /proc every owner looks dead; better to leave litter than to delete a live one.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let entries = ["/dev/shm", "/tmp"]
        .into_iter()
        .flat_map(fs::read_dir)
        .flatten();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("sisy-pg-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Streaming replication, for failover tests.
impl Server {
    /// A private cluster that streams from this one: a `pg_basebackup -R` of it, started on
    /// a socket and port of its own, read-only until [`Server::promote`].
    pub fn start_replica(&self) -> Server {
        self.start_replica_with(&[])
    }

    /// [`Server::start_replica`] with `settings` over the test defaults, as for
    /// [`Server::start_private_with`]: a standby needs at least the primary's
    /// `max_connections`, and the benchmark's replica listens on TCP too.
    pub fn start_replica_with(&self, settings: &[&str]) -> Server {
        let replica = Server::start_private_with(settings);
        // The fresh cluster only provides the directories, port and cleanup; its data is
        // replaced by a copy of this one.
        replica.stop();
        fs::remove_dir_all(&replica.data_dir)
            .unwrap_or_else(|e| panic!("remove {}: {e}", replica.data_dir.display()));
        let mut cmd = Command::new(self.bin_dir.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&replica.data_dir)
            .args(["-R", "-X", "stream", "-c", "fast", "-U", "postgres", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string());
        replica.as_cluster_owner(&mut cmd);
        let out = cmd.output().expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        replica.start();
        replica
    }

    /// Promotes a replica to a primary and waits until it accepts writes.
    pub fn promote(&self) {
        let admin = self.url_for("postgres");
        on_own_runtime(async {
            let (client, connection) = tokio_postgres::connect(&admin, NoTls).await?;
            let connection = tokio::spawn(connection);
            client.execute("SELECT pg_promote(true, 60)", &[]).await?;
            drop(client);
            let _ = connection.await;
            Ok::<_, tokio_postgres::Error>(())
        })
        .unwrap_or_else(|e| panic!("promote the replica via {admin}: {e:#}"));
    }

    /// Whether this replica has replayed everything `primary` has written so far.
    pub fn caught_up_with(&self, primary: &Server) -> bool {
        let query = |url: String, sql: &'static str| {
            on_own_runtime(async move {
                let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
                let connection = tokio::spawn(connection);
                let lsn: String = client.query_one(sql, &[]).await?.get(0);
                drop(client);
                let _ = connection.await;
                Ok::<_, tokio_postgres::Error>(lsn)
            })
        };
        let written = query(
            primary.url_for("postgres"),
            "SELECT pg_current_wal_lsn()::text",
        );
        let replayed = query(
            self.url_for("postgres"),
            "SELECT coalesce(pg_last_wal_replay_lsn()::text, '0/0')",
        );
        match (written, replayed) {
            (Ok(w), Ok(r)) => lsn(&r) >= lsn(&w),
            _ => false,
        }
    }
}

/// A WAL position `X/Y` as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}

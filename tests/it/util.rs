//! Helpers for the integration tests: a migrated database per test, real `sisy guardian`
//! processes, and waiting on events (a state in the tables) with a deadline instead of
//! sleeping a fixed time.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::pg::{self, TestDb};

/// The `sisy` binary under test.
pub fn sisy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sisy"))
}

/// A fresh database with the sisy schema applied by the real binary.
pub async fn migrated_db() -> (TestDb, Client) {
    migrate(pg::fresh_database()).await
}

/// A fresh database on a server of the test's own (one it may stop, restart or fail over),
/// with the sisy schema applied by the real binary.
pub async fn migrated_db_on(server: &pg::Server) -> (TestDb, Client) {
    let db = tokio::task::block_in_place(|| server.fresh_database());
    migrate(db).await
}

async fn migrate(db: TestDb) -> (TestDb, Client) {
    let out = sisy()
        .args(["--database-url", &db.url, "db", "migrate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = db.connect().await;
    (db, client)
}

/// A scratch directory every user (jobs run as `nobody`) may write to.
pub fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sisy-it-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// A `sisy guardian` process. Dropping it kills it (SIGKILL); `stop` shuts it down cleanly.
pub struct Guardian {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// Extra environment of the process (kept for [`Guardian::restart`]).
    env: Vec<(String, String)>,
}

impl Guardian {
    /// Starts a guardian named `name` on `db`, with fast heartbeats and `extra` TOML lines.
    pub fn start(db: &TestDb, name: &str, extra: &str) -> Guardian {
        Guardian::start_with_env(db, name, extra, &[])
    }

    /// [`Guardian::start`] with `env` added to the process's environment.
    pub fn start_with_env(db: &TestDb, name: &str, extra: &str, env: &[(&str, &str)]) -> Guardian {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("sisy-guardian-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("guardian.toml");
        // Defaults for tests (fast heartbeats); a key given in `extra` replaces its default.
        let defaults = [
            ("heartbeat_interval", "\"1s\"".to_string()),
            ("lease", "\"3s\"".to_string()),
            ("shutdown_grace", "\"5s\"".to_string()),
        ];
        let mut toml = format!(
            "database_url = {url:?}\nhost_name = {name:?}\nstate_dir = {state:?}\n{extra}\n",
            url = db.url,
            state = dir.path().display().to_string(),
        );
        for (key, value) in defaults {
            if !extra.lines().any(|l| l.trim_start().starts_with(key)) {
                toml.push_str(&format!("{key} = {value}\n"));
            }
        }
        std::fs::write(&config, toml).unwrap();
        Guardian {
            child: Some(launch(dir.path(), &env)),
            dir,
            env,
        }
    }

    /// The guardian process's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends `signal` to the guardian process (SIGSTOP, SIGCONT, SIGHUP, …).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
        }
    }

    /// SIGKILL (after SIGCONT, in case it was stopped) and reap; the directory (config,
    /// state, log) stays for [`Guardian::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = child.wait();
        }
    }

    /// Rewrites the config file: `edit` gets the current text and returns the new one.
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) {
        let path = self.dir.path().join("guardian.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(&text)).unwrap();
    }

    /// Starts the guardian again with the same config, state directory and log (appended).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(launch(self.dir.path(), &self.env));
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("guardian.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGTERM, then wait for the process to exit; returns its exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().ok().and_then(|s| s.code())
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or None if it
    /// still runs (it is then left running).
    pub async fn exit_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts `sisy guardian` with the config in `dir`, logging (appended) to `dir/guardian.log`.
fn launch(dir: &std::path::Path, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("guardian.log"))
        .unwrap();
    sisy()
        .args(["guardian", "--config"])
        .arg(dir.join("guardian.toml"))
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Drop for Guardian {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The room of its runs' result files, in the system's temporary directory: a next
        // start would remove it, but a test's guardian has none. `rm`, not remove_dir_all:
        // a test's job may have nested directories deeper than this thread's stack.
        if let Ok(room) = std::fs::read_to_string(self.dir.path().join("results-room")) {
            let _ = Command::new("rm").args(["-rf", "--", room.trim()]).status();
        }
    }
}

/// Starts `n` guardians named g1..gn and waits until all are registered and live.
pub async fn fleet(db: &TestDb, client: &Client, n: usize, extra: &str) -> Vec<Guardian> {
    let guardians: Vec<Guardian> = (1..=n)
        .map(|i| Guardian::start(db, &format!("g{i}"), extra))
        .collect();
    let want = n as i64;
    wait_until(
        client,
        "all guardians registered",
        Duration::from_secs(30),
        || "SELECT count(*) FROM sisy.hosts WHERE lease_until > now()".to_string(),
        |v: i64| v >= want,
    )
    .await;
    guardians
}

/// Polls `sql` (one row, one column) until `done` holds for its value; panics with the last
/// value at the deadline. Polling a table is the event here: the guardian writes it.
pub async fn wait_until<T, Q, D>(
    client: &Client,
    what: &str,
    timeout: Duration,
    sql: Q,
    done: D,
) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a> + std::fmt::Debug,
    Q: Fn() -> String,
    D: Fn(T) -> bool,
    T: Clone,
{
    let deadline = Instant::now() + timeout;
    loop {
        let value: T = client.query_one(&sql(), &[]).await.unwrap().get(0);
        if done(value.clone()) {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last value {value:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until run `id` is in a final state and returns it.
pub async fn wait_finished(client: &Client, id: i64, timeout: Duration) -> String {
    wait_until(
        client,
        &format!("run {id} to finish"),
        timeout,
        || format!("SELECT state FROM sisy.runs WHERE id = {id}"),
        |s: String| !matches!(s.as_str(), "pending" | "running"),
    )
    .await
}

/// Waits until run `id`'s process has started (its pid is recorded) and returns the pid.
pub async fn wait_started(client: &Client, id: i64) -> i32 {
    wait_until(
        client,
        &format!("run {id} to start"),
        Duration::from_secs(60),
        || format!("SELECT coalesce(pid, 0) FROM sisy.runs WHERE id = {id}"),
        |pid: i32| pid > 0,
    )
    .await
}

/// The recorded output of run `id`.
pub async fn output_of(client: &Client, id: i64) -> String {
    client
        .query_one("SELECT output FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// Triggers `job` through the SQL function; returns the run id.
pub async fn trigger(client: &Client, job: &str) -> i64 {
    client
        .query_one("SELECT sisy.trigger($1)", &[&job])
        .await
        .unwrap()
        .get(0)
}

/// The CPU time the server process behind `client` has used so far: what a statement cost,
/// unlike its wall time, hardly depends on what else the machine is doing. Read from
/// /proc/PID/schedstat (nanoseconds), else from /proc/PID/stat (clock ticks of 10 ms).
pub async fn backend_cpu(client: &tokio_postgres::Client) -> Duration {
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let on_cpu_ns = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
    if let Some(ns) = on_cpu_ns {
        return Duration::from_nanos(ns);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("the backend {pid}'s /proc stat: {e}"));
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace())
        .into_iter()
        .flatten()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime, the 14th and 15th fields of the line (11 and 12 after the name).
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// Whether a process is gone (or a zombie nobody reaped, which runs nothing).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Polls `done` (a process state, a file) every 20 ms until it holds; panics at the deadline.
pub async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job command that waits until `flag` exists (the test creates it to let the job end).
pub fn until_file(flag: &std::path::Path) -> String {
    format!("while [ ! -e {} ]; do sleep 0.1; done", flag.display())
}

/// The pids in /proc now.
fn pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live processes whose environment holds `key=value` (jobs inherit their run's `env`; run
/// shims hold none of it), as (pid, SISY_RUN_ID). Zombies are not counted: they run nothing.
pub fn processes_with_env(key: &str, value: &str) -> Vec<(i32, Option<i64>)> {
    let mark = format!("{key}={value}");
    pids()
        .into_iter()
        .filter_map(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            if !vars.contains(&mark.as_bytes()) || process_gone(pid) {
                return None;
            }
            let run_id = vars.iter().find_map(|v| {
                std::str::from_utf8(v.strip_prefix(b"SISY_RUN_ID=")?)
                    .ok()?
                    .parse()
                    .ok()
            });
            Some((pid, run_id))
        })
        .collect()
}

/// The shim spawner of the guardian process `guardian` (a `sisy __run-shim` process whose
/// parent is the guardian; it starts at the guardian's first run).
pub fn spawner_of(guardian: i32) -> Option<i32> {
    pids().into_iter().find(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.split(|b| *b == 0).any(|arg| arg == b"__run-shim")
            && parent_of(*pid) == Some(guardian)
            && !process_gone(*pid)
    })
}

/// The live run shims of the guardian process `guardian`: the children of its shim spawner
/// (both are `sisy __run-shim` processes; the spawner's parent is the guardian).
pub fn shims_of(guardian: i32) -> Vec<i32> {
    let shim_processes: Vec<i32> = pids()
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).any(|arg| arg == b"__run-shim") && !process_gone(*pid)
        })
        .collect();
    let spawners: Vec<i32> = spawner_of(guardian).into_iter().collect();
    shim_processes
        .into_iter()
        .filter(|pid| parent_of(*pid).is_some_and(|p| spawners.contains(&p)))
        .collect()
}

/// The descriptors process `pid` holds, in order (from /proc/PID/fd).
pub fn descriptors_of(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort_unstable();
    fds
}

/// The parent pid of `pid`, from /proc.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What a [`ProcessSampler`] saw: when, and which runs had live processes.
type Samples = Vec<(Duration, Vec<i64>)>;

/// Samples, every 20 ms on a thread of its own, which runs have live job processes (shims
/// not counted) among the processes whose environment holds `key=value`.
pub struct ProcessSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Samples>>,
}

impl ProcessSampler {
    pub fn start(key: &str, value: &str) -> ProcessSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (key, value, flag) = (key.to_string(), value.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let began = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let mut runs: Vec<i64> = processes_with_env(&key, &value)
                    .into_iter()
                    .filter_map(|(_, run)| run)
                    .collect();
                runs.sort_unstable();
                runs.dedup();
                samples.push((began.elapsed(), runs));
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        ProcessSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns the longest stretch during which processes of two or more
    /// runs were alive at once, and the number of samples taken.
    pub fn longest_overlap(mut self) -> (Duration, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = self.thread.take().unwrap().join().unwrap();
        let (mut longest, mut since) = (Duration::ZERO, None);
        for (at, runs) in &samples {
            match (runs.len() >= 2, since) {
                (true, None) => since = Some(*at),
                (true, Some(s)) => longest = longest.max(*at - s),
                (false, _) => since = None,
            }
        }
        (longest, samples.len())
    }
}

/// A unix-socket proxy in front of a PostgreSQL server, to cut one guardian off the database
/// (a network partition) while the others still reach it: either by resetting its
/// connections ([`Proxy::cut`]) or by black-holing them ([`Proxy::blackhole`]); or to make
/// the database slow ([`Proxy::lag`]).
pub struct Proxy {
    pub dir: tempfile::TempDir,
    pub port: u16,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    /// How long every answer is held back, in milliseconds.
    lag: std::sync::Arc<std::sync::atomic::AtomicU64>,
    links: std::sync::Arc<std::sync::Mutex<Vec<Link>>>,
    accept: tokio::task::JoinHandle<()>,
}

/// One proxied connection: its task, and whether it was frozen by a black hole.
struct Link {
    task: tokio::task::AbortHandle,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const OPEN: u8 = 0;
const CUT: u8 = 1;
const BLACKHOLE: u8 = 2;

impl Proxy {
    /// Forwards `dir/.s.PGSQL.<port>` to the server's socket.
    pub fn start(server: &pg::Server) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("sisy-proxy-")
            .tempdir()
            .unwrap();
        let port = server.port;
        let target = server.socket_dir.join(format!(".s.PGSQL.{port}"));
        let listener =
            tokio::net::UnixListener::bind(dir.path().join(format!(".s.PGSQL.{port}"))).unwrap();
        let mode = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(OPEN));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lag = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (m, l, g) = (mode.clone(), links.clone(), lag.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode = m.load(std::sync::atomic::Ordering::SeqCst);
                if mode == CUT {
                    continue; // dropped: the connection is refused
                }
                let frozen =
                    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(mode == BLACKHOLE));
                let task = tokio::spawn(forward(client, target.clone(), frozen.clone(), g.clone()));
                l.lock().unwrap().push(Link {
                    task: task.abort_handle(),
                    frozen,
                });
            }
        });
        Proxy {
            dir,
            port,
            mode,
            lag,
            links,
            accept,
        }
    }

    /// A `TestDb` for `db` that goes through the proxy.
    pub fn db(&self, db: &TestDb) -> TestDb {
        TestDb {
            name: db.name.clone(),
            url: format!(
                "host={} port={} user=postgres dbname={}",
                self.dir.path().display(),
                self.port,
                db.name
            ),
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.store(CUT, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.task.abort();
        }
    }

    /// Black-holes the database, as a network that drops packets does: no byte passes in
    /// either direction any more, yet no socket is closed, so the guardian sees no error, only
    /// silence; new connections are accepted and then hear nothing either. The connections
    /// open now stay silent for good, even after [`Proxy::heal`] (as after a failover to
    /// another address, or a firewall that lost the flow's state): only new ones work again.
    pub fn blackhole(&self) {
        self.mode
            .store(BLACKHOLE, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().iter() {
            link.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Holds back every answer of the database (on every connection, open or new) for
    /// `lag`, as a database that is slow but answers; zero ends it.
    pub fn lag(&self, lag: Duration) {
        self.lag
            .store(lag.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets new connections through again.
    pub fn heal(&self) {
        self.mode.store(OPEN, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Forwards one connection both ways until either side closes; once `frozen`, whatever
/// arrives is held back forever and the sockets stay open.
async fn forward(
    client: tokio::net::UnixStream,
    target: PathBuf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    lag: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let Ok(upstream) = tokio::net::UnixStream::connect(&target).await else {
        return;
    };
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    let no_lag = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::join!(
        pump(client_r, upstream_w, frozen.clone(), no_lag),
        pump(upstream_r, client_w, frozen, lag),
    );
}

async fn pump(
    mut from: tokio::net::unix::OwnedReadHalf,
    mut to: tokio::net::unix::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    lag: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            // Keep both halves (the sockets stay open) and pass nothing on, ever.
            let _hold = (from, to);
            return std::future::pending().await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            continue; // dropped on the floor; the loop then holds the sockets
        }
        let lag = lag.load(std::sync::atomic::Ordering::SeqCst);
        if lag > 0 {
            tokio::time::sleep(Duration::from_millis(lag)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A connection of its own that listens on a channel: the payloads of its notifications, in
/// the order the server sent them.
pub struct Listener {
    /// Kept: the connection ends with its client.
    _client: Client,
    payloads: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Listener {
    pub async fn start(db: &TestDb, channel: &str) -> Listener {
        use futures_util::StreamExt;
        let (client, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let (tx, payloads) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(msg)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                    let _ = tx.send(n.payload().to_string());
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .unwrap();
        Listener {
            _client: client,
            payloads,
        }
    }

    /// The next payload, within `limit`; panics saying `what` was awaited.
    pub async fn next(&mut self, limit: Duration, what: &str) -> String {
        tokio::time::timeout(limit, self.payloads.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} within {limit:?}"))
            .expect("the listening connection is alive")
    }
}

//! The guardian daemon: start-up, the services it runs, reloading, and shutdown.
//!
//! Start-up, in this order:
//! 1. lock `state_dir` (one guardian process per state directory) and kill the job process
//!    groups a previous process of this host left behind (see `orphans`);
//! 2. reach the database: an unreachable one is waited for (logged once, retried with
//!    backoff up to `heartbeat_interval`), a refused password or a schema of the wrong
//!    version stops start-up;
//! 3. register the host, waiting out the lease of a previous process under the same name,
//!    so that two processes never act as one host;
//! 4. write the results the previous process left in the spool, then declare the runs it
//!    left running `lost`;
//! 5. run the services — dispatcher (scheduler + claimer + supervisors), heartbeat, listener,
//!    reaper — until the shutdown token fires.
//!
//! Steps 2–4 are safe to repeat: if the database goes away midway, the sequence starts again.
//! SIGHUP ([`request_reload`]) reads the config file again and applies what a running
//! guardian can (see [`GuardianConfig::reload`]) without touching running jobs. Shutdown:
//! stop claiming, let running jobs finish for up to `shutdown_grace`, stop the rest (state
//! `killed`, error 'guardian shutdown'), record every result (or leave it in the spool), and
//! give up the lease. Shared state between the services lives in [`Shared`], with the
//! reasoning on its fields.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use deadpool_postgres::Pool;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GuardianConfig;
use crate::db::{self, q};
use crate::orphans::Registry;
use crate::outage::{self, Outage};
use crate::recorder::Recorder;
use crate::spool::Spool;
use crate::supervisor::StopReason;
use crate::users::Policy;
use crate::{dispatcher, heartbeat, listener, migrate, reaper};

/// A run this guardian is supervising.
pub struct RunHandle {
    pub job_name: String,
    /// Tells the supervisor to stop the process, and why.
    pub stop: watch::Sender<Option<StopReason>>,
    /// The process id once started (heartbeats carry it to the database).
    pub pid: watch::Receiver<Option<u32>>,
}

/// State shared by the guardian's services.
pub struct Shared {
    /// The running configuration; replaced as a whole by a reload. Read it through
    /// [`Shared::config`], once per decision, so one decision sees one configuration.
    config: RwLock<Arc<GuardianConfig>>,
    /// This host's name: fixed for the life of the process (a reload keeps it).
    pub host: String,
    pub db: Pool,
    /// A connection of the heartbeat's own, so that renewing the lease never waits behind
    /// the other services (say, sixteen results being written at once).
    pub beat_db: Pool,
    /// Runs in progress here, by run id, from just before their process starts until it has
    /// ended. Its size is what counts against `capacity`.
    pub runs: Mutex<HashMap<i64, RunHandle>>,
    /// Runs this guardian holds without a process: claimed and waiting for the run they
    /// replace to end, or ended with their result not yet in the database. The heartbeat
    /// renews them too, so the database does not take them for runs this host forgot.
    pub held: Mutex<HashSet<i64>>,
    /// Wakes the dispatcher: a notification arrived, a run finished, the host changed.
    pub wake: Notify,
    /// Set by the heartbeat from the host row: a draining host claims nothing new.
    pub draining: AtomicBool,
    /// Fires when the guardian starts to shut down: services stop taking new work.
    pub stopping: CancellationToken,
    /// Fires when waiting for results is pointless (the process is about to exit).
    pub abandon: CancellationToken,
    /// Supervisor tasks; shutdown waits on it.
    pub tasks: TaskTracker,
    /// Until when this guardian's jobs may run without a renewal: the run shims' watchdog
    /// deadline (see `heartbeat` for how it is computed, `shim` for what it does).
    pub lease: watch::Sender<std::time::Instant>,
    /// Whether the database answers; logs an outage once.
    pub outage: Arc<Outage>,
    /// Writes results, through the spool when the database is away.
    pub recorder: Recorder,
    /// Records of the job process groups alive here.
    pub registry: Registry,
}

impl Shared {
    /// The running configuration.
    pub fn config(&self) -> Arc<GuardianConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The user policy of the running configuration.
    pub fn policy(&self) -> Policy {
        let config = self.config();
        Policy {
            host: self.host.clone(),
            default_user: config.default_user.clone(),
            allowed_users: config.allowed_users.clone(),
        }
    }

    pub fn running_count(&self) -> usize {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Sends a stop request to run `id` if it runs here; returns whether it did.
    pub fn stop_run(&self, id: i64, reason: StopReason) -> bool {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        match runs.get(&id) {
            Some(h) => {
                tracing::info!(run_id = id, job = %h.job_name, ?reason, "stopping run");
                h.stop.send_replace(Some(reason));
                true
            }
            None => false,
        }
    }

    /// Marks run `id` held (or not) without a process.
    pub fn hold(&self, id: i64, held: bool) {
        let mut set = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }
}

/// Asks the running guardian to read its configuration again (`src/main.rs` calls this on
/// SIGHUP). Signals belong to the process, so this is a process-wide request; one that
/// arrives during start-up is applied once the guardian runs.
pub fn request_reload() {
    RELOAD.notify_one();
}

static RELOAD: Notify = Notify::const_new();

/// Runs a guardian until `shutdown` fires.
pub async fn run(config: GuardianConfig, shutdown: CancellationToken) -> Result<()> {
    let state = StateDir::open(&config.state_dir)?;
    let swept = state.registry.sweep();
    if swept > 0 {
        tracing::warn!(
            groups = swept,
            "killed job processes a previous guardian process left behind"
        );
    }
    if let Some(listen) = config.metrics_listen {
        crate::metrics::install(listen)?;
    }
    let outage = Arc::new(Outage::default());
    let pool = db::pool(&config.database_url, 6)?;
    let recorder = Recorder {
        db: pool.clone(),
        spool: state.spool.clone(),
        outage: outage.clone(),
        retry_cap: config.heartbeat_interval,
    };
    let mut pause = Duration::from_millis(100);
    let registered_at = loop {
        match start_up(&pool, &config, &recorder, &shutdown).await {
            Ok(Some(at)) => break at,
            Ok(None) => return Ok(()),
            Err(e) if outage::is_connection_error(&e) => outage.failed("start-up", &e),
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        pause = (pause * 2).min(config.heartbeat_interval);
    };
    outage.ok();
    let (lease, _) = watch::channel(registered_at + config.lease);
    let shared = Arc::new(Shared {
        host: config.host_name.clone(),
        beat_db: db::pool(&config.database_url, 1)?,
        config: RwLock::new(Arc::new(config)),
        db: pool,
        runs: Mutex::new(HashMap::new()),
        held: Mutex::new(HashSet::new()),
        wake: Notify::new(),
        draining: AtomicBool::new(false),
        stopping: CancellationToken::new(),
        abandon: CancellationToken::new(),
        tasks: TaskTracker::new(),
        lease,
        outage,
        recorder,
        registry: state.registry.clone(),
    });
    let config = shared.config();
    tracing::info!(
        host = %shared.host, pools = ?config.pools, capacity = config.capacity,
        version = env!("CARGO_PKG_VERSION"), "guardian started"
    );
    let services = TaskTracker::new();
    services.spawn(listener::run(shared.clone()));
    services.spawn(heartbeat::run(shared.clone()));
    let dispatcher = tokio::spawn(dispatcher::run(shared.clone()));
    services.spawn(reaper::run(shared.clone()));
    services.close();
    let reloader = tokio::spawn(reload_on_request(shared.clone()));

    shutdown.cancelled().await;
    reloader.abort();
    shared.stopping.cancel();
    shared.wake.notify_waiters();
    // The dispatcher finishes its pass first: a run it claimed must get its supervisor task
    // before the task tracker is closed and waited on.
    if let Err(e) = dispatcher.await {
        tracing::error!(error = %e, "dispatcher task failed");
    }
    drain_and_stop(&shared).await;
    // Every result is written (or in the spool): the remaining services may end.
    shared.abandon.cancel();
    services.wait().await;
    let released = async {
        let client = shared.db.get().await?;
        client.execute(q::HOSTS_RELEASE, &[&shared.host]).await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(5), released).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "could not release the lease; it expires by itself")
        }
        Err(_) => tracing::warn!("could not release the lease in time; it expires by itself"),
    }
    tracing::info!(host = %shared.host, "guardian stopped");
    Ok(())
}

/// Steps 2–4 of the start-up; None when shutdown was asked for meanwhile. Returns the
/// instant just before the registration was sent: the host's lease runs from no earlier.
async fn start_up(
    pool: &Pool,
    config: &GuardianConfig,
    recorder: &Recorder,
    shutdown: &CancellationToken,
) -> Result<Option<std::time::Instant>> {
    let client = pool.get().await.context(
        "cannot connect to the database: check database_url and that PostgreSQL is running",
    )?;
    migrate::ensure_current(&client).await?;
    let Some(at) = register(&client, config, shutdown).await? else {
        return Ok(None);
    };
    let replayed = recorder.replay().await?;
    if replayed > 0 {
        tracing::info!(
            count = replayed,
            "results spooled by the previous guardian process written"
        );
    }
    let lost = client
        .execute(q::RUNS_ORPHANED_BY_RESTART, &[&config.host_name])
        .await?;
    if lost > 0 {
        tracing::warn!(
            count = lost,
            "runs left running by this host's previous process marked lost"
        );
    }
    Ok(Some(at))
}

/// Registers this host, waiting while another process holds its lease.
async fn register(
    client: &tokio_postgres::Client,
    config: &GuardianConfig,
    shutdown: &CancellationToken,
) -> Result<Option<std::time::Instant>> {
    let lease = config.lease.as_secs_f64();
    let capacity = config.capacity as i32;
    let mut logged = false;
    loop {
        let sent = std::time::Instant::now();
        let row = client
            .query_one(
                q::HOSTS_REGISTER,
                &[
                    &config.host_name,
                    &config.pools,
                    &env!("CARGO_PKG_VERSION"),
                    &lease,
                    &capacity,
                ],
            )
            .await?;
        // Registered when the upsert wrote the row (it returns the host's `draining`).
        if row.get::<_, Option<bool>>("draining").is_some() {
            return Ok(Some(sent));
        }
        if !logged {
            // Unknown when the other process registered during this very statement.
            let until: Option<chrono::DateTime<chrono::Utc>> = row.get("held_until");
            tracing::warn!(
                host = %config.host_name, until = ?until,
                "another guardian holds this host's lease (a previous process that did not stop cleanly, or a second guardian with the same host_name); waiting for it to expire"
            );
            logged = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// The shutdown sequence of SPEC §4.
async fn drain_and_stop(shared: &Arc<Shared>) {
    let running = shared.running_count();
    let grace = shared.config().shutdown_grace;
    if running > 0 {
        tracing::info!(running, ?grace, "waiting for running jobs to finish");
    }
    shared.tasks.close();
    if tokio::time::timeout(grace, shared.tasks.wait())
        .await
        .is_err()
    {
        let ids: Vec<i64> = shared
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        tracing::warn!(
            count = ids.len(),
            "shutdown grace over: stopping the remaining jobs"
        );
        for id in ids {
            shared.stop_run(id, StopReason::Shutdown);
        }
        // Each stopped job gets its kill_grace; results are then recorded. Past that, give up
        // waiting for the database (the results stay in the spool) so that the process exits.
        let max_grace = Duration::from_secs(60);
        if tokio::time::timeout(max_grace, shared.tasks.wait())
            .await
            .is_err()
        {
            shared.abandon.cancel();
            shared.tasks.wait().await;
        }
    }
}

/// Applies a reload for every request until the task is aborted at shutdown.
async fn reload_on_request(shared: Arc<Shared>) {
    loop {
        RELOAD.notified().await;
        reload(&shared);
    }
}

/// Reads the configuration again and applies it; a configuration that does not load is
/// reported and changes nothing.
fn reload(shared: &Shared) {
    let running = shared.config();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let fresh = match GuardianConfig::load(running.path.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "SIGHUP: the configuration was not reloaded; the guardian keeps running with the previous one");
            return;
        }
    };
    let reload = running.reload(fresh);
    if !reload.kept.is_empty() {
        tracing::warn!(keys = ?reload.kept, "SIGHUP: these keys changed but only take effect when the guardian restarts");
    }
    *shared.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(reload.config);
    tracing::info!(applied = ?reload.applied, "SIGHUP: configuration reloaded; running jobs are untouched");
    // More capacity or new pools: look for work now.
    shared.wake.notify_one();
}

/// The guardian's local state directory, held exclusively while the process runs.
struct StateDir {
    /// An exclusive lock on `state_dir/lock`: two guardian processes sharing a directory
    /// would replay each other's spool and kill each other's jobs at start-up.
    _lock: Flock<File>,
    spool: Spool,
    registry: Registry,
}

impl StateDir {
    fn open(dir: &Path) -> Result<StateDir> {
        let context = || {
            format!(
                "state_dir: cannot create or use {}: create it and make it writable for the guardian's user, or set state_dir",
                dir.display()
            )
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(context)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .with_context(context)?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow!(
                "state_dir {} is in use by another guardian process on this host ({e}): stop that one, or give each guardian its own state_dir",
                dir.display()
            )
        })?;
        Ok(StateDir {
            _lock: lock,
            spool: Spool::open(dir).with_context(context)?,
            registry: Registry::open(dir).with_context(context)?,
        })
    }
}

pub(crate) fn is_draining(shared: &Shared) -> bool {
    shared.draining.load(Ordering::Relaxed)
}

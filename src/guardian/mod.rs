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
//!    reaper — until the shutdown token fires or one of them fails.
//!
//! Steps 2–4 are safe to repeat: if the database goes away midway, or does not answer within
//! a lease, the sequence starts again (`startup`). SIGHUP ([`request_reload`]) reads the
//! config file again and applies what a running guardian can (see
//! [`GuardianConfig::reload`]) without touching running jobs. Shutdown (`shutdown`): stop
//! claiming, let running jobs finish for up to `shutdown_grace`, stop the rest (state
//! `killed`, error 'guardian shutdown'), record every result (or leave it in the spool), and
//! give up the lease; every wait in it is bounded, database or not. The services are
//! watched (`services`): one that ends or panics before shutdown, or a run's supervisor task
//! that panics, stops the guardian the same way, its jobs at once, and [`run`] returns an
//! error so that the process exits non-zero and systemd restarts it. Shared state between
//! the services lives in [`Shared`], with the reasoning on its fields.

mod services;
mod shutdown;
mod startup;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Result, anyhow};
use deadpool_postgres::Pool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GuardianConfig;
use crate::db::{self, q};
use crate::outage::Outage;
use crate::run::StopReason;
use crate::run::orphans::Registry;
use crate::run::recorder::Recorder;
use crate::run::users::Policy;
use crate::service::{dispatcher, heartbeat, listener, reaper};
use services::Services;
pub(crate) use services::{fault_point, panic_message};
use startup::StateDir;

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
    /// This process's registration of the name (`sisy.hosts.started_at`): the heartbeat
    /// renews the lease only while the row is still this registration's.
    pub incarnation: chrono::DateTime<chrono::Utc>,
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
    /// Stop requests for held runs (no process yet): the dispatcher applies them instead of
    /// starting the process, so a kill that arrives before the start is never dropped.
    pub early_stops: Mutex<HashMap<i64, StopReason>>,
    /// Wakes the dispatcher: a notification arrived, a run finished, the host changed.
    pub wake: Notify,
    /// Notified each time a run's process has ended (removed from `runs`): shutdown waits
    /// on it for the jobs to finish.
    pub ended: Notify,
    /// Set by the heartbeat from the host row: a draining host claims nothing new.
    pub draining: AtomicBool,
    /// Fires when the guardian starts to shut down: services stop taking new work.
    pub stopping: CancellationToken,
    /// Fires when waiting for results is pointless (the process is about to exit).
    pub abandon: CancellationToken,
    /// Fires when a task of the guardian failed (a supervisor task panicked): the guardian
    /// stops and exits non-zero. `failure` says why; set once, by [`Shared::fail`].
    pub failed: CancellationToken,
    failure: Mutex<Option<String>>,
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

    /// Sends a stop request to run `id` if it runs here, or keeps it for the dispatcher if
    /// the run is held without a process; returns whether the run is this guardian's.
    pub fn stop_run(&self, id: i64, reason: StopReason) -> bool {
        // Locks in the order runs, held, early_stops; the run table stays locked throughout,
        // so a run being started either has its handle here or finds its early stop.
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = runs.get(&id) {
            tracing::info!(run_id = id, job = %h.job_name, ?reason, "stopping run");
            h.stop.send_replace(Some(reason));
            return true;
        }
        if !self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            return false;
        }
        let mut early = self.early_stops.lock().unwrap_or_else(|p| p.into_inner());
        tracing::info!(
            run_id = id,
            ?reason,
            "stopping run before its process starts"
        );
        early.insert(id, reason);
        // Waiting runs are admitted again at once: admission ends them (see `claimer`).
        self.wake.notify_one();
        true
    }

    /// The stop request that arrived for held run `id` before its process started, if any.
    pub fn take_early_stop(&self, id: i64) -> Option<StopReason> {
        let mut early = self.early_stops.lock().unwrap_or_else(|p| p.into_inner());
        early.remove(&id)
    }

    /// Reports a failure that must stop the guardian (the first one is kept as the reason).
    pub fn fail(&self, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            *failure = Some(why);
        }
        self.failed.cancel();
    }

    /// Marks run `id` held (or not) without a process.
    pub fn hold(&self, id: i64, held: bool) {
        let mut set = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held {
            set.insert(id);
        } else {
            set.remove(&id);
            drop(set);
            self.take_early_stop(id);
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

/// Runs a guardian until `shutdown` fires; an error when it stopped because one of its own
/// services failed (see `services`), so that the process exits non-zero and is restarted.
pub async fn run(config: GuardianConfig, shutdown: CancellationToken) -> Result<()> {
    let state = StateDir::open_and_sweep(&config.state_dir).await?;
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
    let Some((registered_at, incarnation)) =
        startup::until_started(&pool, &config, &recorder, &outage, &shutdown).await?
    else {
        return Ok(());
    };
    let (lease, _) = watch::channel(registered_at + config.lease);
    let shared = Arc::new(Shared {
        host: config.host_name.clone(),
        incarnation,
        beat_db: db::pool(&config.database_url, 1)?,
        config: RwLock::new(Arc::new(config)),
        db: pool,
        runs: Mutex::new(HashMap::new()),
        held: Mutex::new(HashSet::new()),
        early_stops: Mutex::new(HashMap::new()),
        wake: Notify::new(),
        ended: Notify::new(),
        draining: AtomicBool::new(false),
        stopping: CancellationToken::new(),
        abandon: CancellationToken::new(),
        failed: CancellationToken::new(),
        failure: Mutex::new(None),
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
    let mut services = Services::new();
    services.spawn("listener", listener::run(shared.clone()));
    services.spawn("heartbeat", heartbeat::run(shared.clone()));
    services.spawn("dispatcher", dispatcher::run(shared.clone()));
    services.spawn("reaper", reaper::run(shared.clone()));

    serve(shared, services, shutdown).await
}

/// Watches the services until shutdown or a failure, then runs the shutdown sequence.
async fn serve(
    shared: Arc<Shared>,
    mut services: Services,
    shutdown: CancellationToken,
) -> Result<()> {
    let reloader = tokio::spawn(reload_on_request(shared.clone()));
    let failure = tokio::select! {
        _ = shutdown.cancelled() => None,
        ended = services.next() => Some(services::describe(&ended)),
        _ = shared.failed.cancelled() => shared.failure.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    reloader.abort();
    if let Some(why) = &failure {
        tracing::error!(
            reason = %why,
            "guardian failed: stopping its jobs, recording what it can and exiting non-zero so that it is restarted"
        );
    }
    shutdown::shut_down(&shared, &mut services, failure.as_deref()).await;
    // A supervisor task that panicked during the shutdown fails the process too.
    let failure = failure.or_else(|| {
        shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    });
    match failure {
        None => {
            tracing::info!(host = %shared.host, "guardian stopped");
            Ok(())
        }
        Some(why) => Err(anyhow!(
            "the guardian stopped because {why}; the service manager starts it again \
             (systemd: Restart=on-failure)"
        )),
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

pub(crate) fn is_draining(shared: &Shared) -> bool {
    shared.draining.load(Ordering::Relaxed)
}

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
//! 5. run the services — dispatcher (scheduler + claimer + supervisors), heartbeat, listener
//!    (with `listen = true`), reaper — until the shutdown token fires or one of them fails.
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
//! error so that the process exits non-zero and systemd restarts it. Each service gets
//! the narrow handles it needs (see `service`); the runs live in the `RunTable` (`run::table`).

mod services;
mod shutdown;
mod startup;

use std::sync::Arc;

use anyhow::{Result, anyhow};
use deadpool_postgres::Pool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GuardianConfig;
use crate::db::{self, q};
use crate::outage::Outage;
use crate::run::recorder::Recorder;
use crate::run::table::RunTable;
use crate::service::{Draining, Failure, Leads, LiveConfig};
use crate::service::{dispatcher, heartbeat, listener, reaper};
use services::Services;
use startup::StateDir;

/// What the guardian keeps of its own to watch, reload and shut down its services; each
/// service got clones of only the handles it needs.
struct Guardian {
    config: LiveConfig,
    /// This host's name: fixed for the life of the process (a reload keeps it).
    host: String,
    /// This process's registration (`hosts.started_at`): the shutdown releases the lease
    /// only while it is still this process's, never a newer holder's of the same name.
    incarnation: chrono::DateTime<chrono::Utc>,
    db: Pool,
    /// The runs held here: shutdown stops them and waits for their processes.
    runs: Arc<RunTable>,
    /// Wakes the dispatcher (a reload, the shutdown).
    wake: Arc<Notify>,
    /// Fires when the guardian starts to shut down: services stop taking new work.
    stopping: CancellationToken,
    /// Fires when waiting for results is pointless (the process is about to exit).
    abandon: CancellationToken,
    /// A task of the guardian failed (a supervisor task panicked, the host name was taken
    /// over): the guardian stops and exits non-zero.
    failure: Arc<Failure>,
    /// Supervisor tasks (each writes its run's result); shutdown waits on it.
    tasks: TaskTracker,
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
pub(crate) async fn run(config: GuardianConfig, shutdown: CancellationToken) -> Result<()> {
    let state = StateDir::open_and_sweep(&config.state_dir).await?;
    if let Some(listen) = config.metrics_listen {
        crate::metrics::install(listen)?;
    }
    let outage = Arc::new(Outage::default());
    // A guardian paused inside a transaction gives its row locks up within this: other
    // guardians skip (SKIP LOCKED) or wait on (admission) the jobs it locked meanwhile.
    let locks_held_at_most = config.lease.max(std::time::Duration::from_secs(10));
    // Through a transaction pooler (listen = false) no setting outlives a transaction, and
    // without prepared statements none is named: every statement of the process follows.
    db::configure(db::Mode {
        prepared_statements: config.prepared_statements,
        session_state: config.listen,
        idle_in_transaction: locks_held_at_most,
    });
    let pool =
        db::pool_with_lock_limit(&config.database_url, config.pool_size, locks_held_at_most)?;
    let recorder = Recorder {
        db: pool.clone(),
        spool: state.spool.clone(),
        outage: outage.clone(),
        retry_cap: config.heartbeat_interval,
        batch: Default::default(),
    };
    let Some((registered_at, incarnation)) =
        startup::until_started(&pool, &config, &recorder, &outage, &shutdown).await?
    else {
        return Ok(());
    };
    let lease = Arc::new(watch::Sender::new(registered_at + config.lease));
    let beat_db = db::pool_with_lock_limit(&config.database_url, 1, locks_held_at_most)?;
    let wake = Arc::new(Notify::new());
    let host = config.host_name.clone();
    tracing::info!(
        host = %host, pools = ?config.pools, capacity = config.capacity,
        version = env!("CARGO_PKG_VERSION"), "guardian started"
    );
    tracing::info!(tzdb = %crate::schedule::database(), "time zones from this tz database");
    let g = Guardian {
        config: LiveConfig::new(config),
        host,
        incarnation,
        db: pool,
        runs: Arc::new(RunTable::new(wake.clone())),
        wake,
        stopping: CancellationToken::new(),
        abandon: CancellationToken::new(),
        failure: Arc::new(Failure::default()),
        tasks: TaskTracker::new(),
    };
    let draining = Draining::default();
    let leads = Leads::default();
    let mut services = Services::new();
    // Without LISTEN, the dispatcher's tick every poll_interval finds what it would forward.
    if g.config.get().listen {
        services.spawn(
            "listener",
            listener::Listener {
                config: g.config.clone(),
                host: g.host.clone(),
                runs: g.runs.clone(),
                wake: g.wake.clone(),
                leads: leads.clone(),
                outage: outage.clone(),
                abandon: g.abandon.clone(),
            }
            .run(),
        );
    }
    services.spawn(
        "heartbeat",
        heartbeat::run(heartbeat::Heartbeat {
            config: g.config.clone(),
            db: beat_db,
            host: g.host.clone(),
            incarnation,
            runs: g.runs.clone(),
            wake: g.wake.clone(),
            draining: draining.clone(),
            leads: leads.clone(),
            failure: g.failure.clone(),
            lease: lease.clone(),
            outage: outage.clone(),
            stopping: g.stopping.clone(),
            abandon: g.abandon.clone(),
            tasks: g.tasks.clone(),
        }),
    );
    services.spawn(
        "dispatcher",
        dispatcher::run(dispatcher::Handles {
            config: g.config.clone(),
            db: g.db.clone(),
            host: g.host.clone(),
            runs: g.runs.clone(),
            wake: g.wake.clone(),
            draining,
            leads: leads.clone(),
            stopping: g.stopping.clone(),
            abandon: g.abandon.clone(),
            tasks: g.tasks.clone(),
            lease,
            outage,
            recorder: Arc::new(recorder),
            registry: state.registry.clone(),
            results: state.results.clone(),
            failure: g.failure.clone(),
        }),
    );
    services.spawn(
        "reaper",
        reaper::Reaper {
            db: g.db.clone(),
            config: g.config.clone(),
            leads,
        }
        .run(g.stopping.clone()),
    );
    serve(Arc::new(g), services, shutdown).await
}

/// Watches the services until shutdown or a failure, then runs the shutdown sequence.
async fn serve(
    shared: Arc<Guardian>,
    mut services: Services,
    shutdown: CancellationToken,
) -> Result<()> {
    let reloader = tokio::spawn(reload_on_request(shared.clone()));
    let failure = tokio::select! {
        _ = shutdown.cancelled() => None,
        ended = services.next() => Some(services::describe(&ended)),
        _ = shared.failure.token().cancelled() => shared.failure.reason(),
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
    let failure = failure.or_else(|| shared.failure.reason());
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
async fn reload_on_request(shared: Arc<Guardian>) {
    loop {
        RELOAD.notified().await;
        reload(&shared);
    }
}

/// Reads the configuration again and applies it; a configuration that does not load is
/// reported and changes nothing.
fn reload(shared: &Guardian) {
    let running = shared.config.get();
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
    shared.config.replace(reload.config);
    tracing::info!(applied = ?reload.applied, "SIGHUP: configuration reloaded; running jobs are untouched");
    // More capacity or new pools: look for work now.
    shared.wake.notify_one();
}

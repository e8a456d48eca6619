//! The guardian daemon: start-up, the services it runs, and shutdown.
//!
//! Owns the lifecycle: check the schema, register the host (waiting out the lease of a
//! previous process under the same name, so two processes never act as one host), mark the
//! previous process's unfinished runs lost, then run the services — dispatcher (scheduler +
//! claimer + supervisors), heartbeat, listener — until the shutdown token fires. Then: stop
//! claiming, let running jobs finish for up to `shutdown_grace`, stop the rest (state
//! `killed`, error 'guardian shutdown'), record every result, and give up the lease.
//! Shared state between the services lives in [`Shared`], with the reasoning on its fields.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use deadpool_postgres::Pool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GuardianConfig;
use crate::db::{self, q};
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
    pub config: GuardianConfig,
    pub db: Pool,
    pub policy: Policy,
    /// Runs in progress here, by run id. Its size is what counts against `capacity`: a run
    /// enters before its process starts and leaves only after its result is recorded.
    pub runs: Mutex<HashMap<i64, RunHandle>>,
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
}

impl Shared {
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
}

/// Runs a guardian until `shutdown` fires.
pub async fn run(config: GuardianConfig, shutdown: CancellationToken) -> Result<()> {
    let client = db::connect(&config.database_url).await?;
    migrate::ensure_current(&client).await?;
    drop(client);
    let pool = db::pool(&config.database_url, 6)?;
    register(&pool, &config, &shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let policy = Policy {
        host: config.host_name.clone(),
        default_user: config.default_user.clone(),
        allowed_users: config.allowed_users.clone(),
    };
    let shared = Arc::new(Shared {
        config,
        db: pool,
        policy,
        runs: Mutex::new(HashMap::new()),
        wake: Notify::new(),
        draining: AtomicBool::new(false),
        stopping: CancellationToken::new(),
        abandon: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    tracing::info!(
        host = %shared.config.host_name, pools = ?shared.config.pools,
        capacity = shared.config.capacity, version = env!("CARGO_PKG_VERSION"), "guardian started"
    );
    let services = TaskTracker::new();
    services.spawn(listener::run(shared.clone()));
    services.spawn(heartbeat::run(shared.clone()));
    let dispatcher = tokio::spawn(dispatcher::run(shared.clone()));
    services.spawn(reaper::run(shared.clone()));
    services.close();

    shutdown.cancelled().await;
    shared.stopping.cancel();
    shared.wake.notify_waiters();
    // The dispatcher finishes its pass first: a run it claimed must get its supervisor task
    // before the task tracker is closed and waited on.
    if let Err(e) = dispatcher.await {
        tracing::error!(error = %e, "dispatcher task failed");
    }
    drain_and_stop(&shared).await;
    // Every result is written (or given up on): the remaining services may end.
    shared.abandon.cancel();
    services.wait().await;
    let client = shared.db.get().await?;
    client
        .execute(q::HOSTS_RELEASE, &[&shared.config.host_name])
        .await?;
    tracing::info!(host = %shared.config.host_name, "guardian stopped");
    Ok(())
}

/// The shutdown sequence of SPEC §4.
async fn drain_and_stop(shared: &Arc<Shared>) {
    let running = shared.running_count();
    if running > 0 {
        tracing::info!(running, grace = ?shared.config.shutdown_grace, "waiting for running jobs to finish");
    }
    shared.tasks.close();
    if tokio::time::timeout(shared.config.shutdown_grace, shared.tasks.wait())
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
        // waiting for the database so that the process can exit.
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

/// Registers this host, waiting while another process holds its lease.
async fn register(
    pool: &Pool,
    config: &GuardianConfig,
    shutdown: &CancellationToken,
) -> Result<()> {
    let client = pool.get().await.context("cannot connect to the database")?;
    let lease = config.lease.as_secs_f64();
    let capacity = config.capacity as i32;
    let mut logged = false;
    loop {
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
        let held_until: Option<chrono::DateTime<chrono::Utc>> = row.get(1);
        let Some(until) = held_until else { break };
        if !logged {
            tracing::warn!(
                host = %config.host_name, %until,
                "another guardian holds this host's lease (a previous process that did not stop cleanly, or a second guardian with the same host_name); waiting for it to expire"
            );
            logged = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
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
    Ok(())
}

pub(crate) fn is_draining(shared: &Shared) -> bool {
    shared.draining.load(Ordering::Relaxed)
}

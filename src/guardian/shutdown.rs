//! The guardian's shutdown sequence (README: "How the guardian behaves", Shutdown), after SIGTERM/SIGINT or a failure of one of
//! its own services. Every wait in it is bounded, whether the database answers or not:
//!
//! ```text
//!  stop claiming        the dispatcher ends its pass (at most a lease; a pass stuck on a
//!                       database that does not answer is abandoned: what it claimed is
//!                       declared lost at the next start) and hands its claimed-but-waiting
//!                       runs to the recorder
//!  running jobs         get shutdown_grace to finish (no grace when the guardian failed:
//!                       it can no longer be trusted to supervise them), then are stopped:
//!                       SIGTERM, SIGKILL after their kill_grace (waited for at most
//!                       MAX_KILL_WAIT)
//!  results              every result is in the database or in the spool once its first
//!                       write was tried; the database gets one heartbeat interval more, then
//!                       the rest stays in the spool for the next start (`abandon`)
//!  services, lease      the heartbeat and listener end on `abandon`; the lease is given up
//! ```
//! Does not own what a stop does to a process (supervisor, shim) nor writing (recorder).

use std::sync::Arc;
use std::time::Duration;

use super::services::Services;
use super::{Guardian, q};
use crate::db;
use crate::run::StopReason;

/// The longest wait for stopped jobs to end (each has its kill_grace; past this the run
/// shims still kill them when the guardian exits).
const MAX_KILL_WAIT: Duration = Duration::from_secs(60);

/// Runs the sequence; `failure` says why the guardian stops when it is not a signal.
pub(super) async fn shut_down(
    shared: &Arc<Guardian>,
    services: &mut Services,
    failure: Option<&str>,
) {
    let config = shared.config.get();
    shared.stopping.cancel();
    shared.wake.notify_waiters();
    // The dispatcher finishes its pass first: a run it claimed must get its supervisor task
    // (or its release) before the task tracker is closed and waited on.
    if !services.wait_for("dispatcher", config.lease).await {
        tracing::warn!(
            "the dispatcher did not finish its pass within a lease (the database does not answer); runs it claimed meanwhile are declared lost at the next start"
        );
    }
    shared.tasks.close();
    let grace = if failure.is_some() {
        Duration::ZERO
    } else {
        config.shutdown_grace
    };
    let running = shared.runs.running_count();
    if running > 0 && !grace.is_zero() {
        tracing::info!(running, ?grace, "waiting for running jobs to finish");
    }
    if !shared.runs.until_no_process(grace).await {
        let ids = shared.runs.running_ids();
        let reason = match failure {
            Some(why) => StopReason::GuardianFailed(why.to_string()),
            None => StopReason::Shutdown,
        };
        tracing::warn!(count = ids.len(), "stopping the remaining jobs");
        for id in ids {
            shared.runs.stop(id, reason.clone());
        }
        if !shared.runs.until_no_process(MAX_KILL_WAIT).await {
            tracing::error!(
                "jobs still running after {MAX_KILL_WAIT:?}; their run shims stop them when the guardian exits"
            );
        }
    }
    // Each result has been tried once (so is in the spool if that failed); give the
    // database a little longer, then leave the rest in the spool.
    let results = tokio::time::timeout(config.heartbeat_interval, shared.tasks.wait()).await;
    shared.abandon.cancel();
    if results.is_err() {
        tracing::warn!(
            "the database did not take every result in time; the rest stays in the spool for the next start"
        );
        // A write in flight ends within its own timeout (see `recorder`).
        shared.tasks.wait().await;
    }
    services.finish(config.lease).await;
    release_lease(shared).await;
}

/// Gives up the lease, so that a restart need not wait for it; it expires by itself anyway.
async fn release_lease(shared: &Guardian) {
    let released = async {
        let client = shared.db.get().await?;
        db::execute(
            &*client,
            q::HOSTS_RELEASE,
            &[&shared.host, &shared.incarnation],
        )
        .await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(5), released).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "could not release the lease; it expires by itself")
        }
        Err(_) => tracing::warn!("could not release the lease in time; it expires by itself"),
    }
}

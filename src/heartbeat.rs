//! The heartbeat: this host's liveness, and the verdict on hosts that lost theirs.
//!
//! Every `heartbeat_interval`, one statement renews the host's lease and the `heartbeat_at`
//! (and pid) of all its running runs, and declares the running runs of hosts whose lease has
//! passed `lost` (the database trigger schedules their retries). What it returns drives
//! fencing: a run this host supervises that the database no longer calls running here was
//! taken away (declared lost while this host was paused or cut off), so its process is killed
//! at once; a run with a kill request is stopped (a fallback for a missed NOTIFY).
//!
//! A guardian only declares others dead after it has itself been connected for a whole
//! lease: right after a database outage every lease has lapsed, and the first guardian back
//! must not condemn the runs of hosts that simply have not reconnected yet.
//! Does not own the lease length or interval (config) nor killing (supervisor).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use crate::db::q;
use crate::guardian::Shared;
use crate::supervisor::StopReason;

/// What one beat found.
#[derive(Debug, Default, Clone)]
pub struct Beat {
    pub draining: bool,
    /// Runs taken away from this host: their processes were told to stop.
    pub fenced: Vec<i64>,
    /// Runs of dead hosts declared lost by this beat.
    pub declared_lost: i64,
}

pub async fn run(shared: Arc<Shared>) {
    let mut heart = Heartbeat {
        shared: shared.clone(),
        connected_since: None,
    };
    let mut ticker = tokio::time::interval(shared.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shared.abandon.cancelled() => return,
        }
        match heart.run_once().await {
            Ok(_) => {
                if failing {
                    tracing::info!("heartbeat restored");
                    failing = false;
                }
            }
            Err(e) => {
                heart.connected_since = None;
                if !failing {
                    tracing::warn!(error = %format!("{e:#}"), "heartbeat failed; the database may be unreachable, retrying each interval");
                    failing = true;
                }
            }
        }
        // Keep beating through shutdown while runs are still being recorded.
        if shared.stopping.is_cancelled() && shared.tasks.is_closed() && shared.tasks.is_empty() {
            return;
        }
    }
}

struct Heartbeat {
    shared: Arc<Shared>,
    /// Since when beats have succeeded without a break.
    connected_since: Option<Instant>,
}

impl Heartbeat {
    async fn run_once(&mut self) -> Result<Beat> {
        let shared = &self.shared;
        let cfg = &shared.config;
        let (ids, pids): (Vec<i64>, Vec<Option<i32>>) = {
            let runs = shared.runs.lock().unwrap_or_else(|p| p.into_inner());
            runs.iter()
                .map(|(id, h)| (*id, h.pid.borrow().map(|p| p as i32)))
                .unzip()
        };
        let since = *self.connected_since.get_or_insert_with(Instant::now);
        let rescue = since.elapsed() >= cfg.lease;
        let client = shared.db.get().await?;
        let row = client
            .query_one(
                q::HEARTBEAT,
                &[
                    &cfg.host_name,
                    &cfg.lease.as_secs_f64(),
                    &(cfg.capacity as i32),
                    &ids,
                    &pids,
                    &cfg.pools,
                    &rescue,
                ],
            )
            .await?;
        let draining: Option<bool> = row.get("draining");
        let alive: HashSet<i64> = row.get::<_, Vec<i64>>("alive").into_iter().collect();
        let kill_requested: Vec<i64> = row.get("kill_requested");
        let declared_lost: i64 = row.get("lost");
        if draining.is_none() {
            // The host row is gone (deleted by hand): announce ourselves again.
            client
                .execute(
                    "INSERT INTO sisy.hosts (name, pools, version, lease_until, capacity) \
                     VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5) ON CONFLICT DO NOTHING",
                    &[&cfg.host_name, &cfg.pools, &env!("CARGO_PKG_VERSION"), &cfg.lease.as_secs_f64(), &(cfg.capacity as i32)],
                )
                .await?;
        }
        let draining = draining.unwrap_or(false);
        if shared.draining.swap(draining, Ordering::Relaxed) != draining {
            tracing::info!(draining, "host drain state changed");
            shared.wake.notify_one();
        }
        let fenced: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !alive.contains(id))
            .collect();
        for id in &fenced {
            if shared.stop_run(*id, StopReason::Fenced) {
                tracing::warn!(
                    run_id = id,
                    "run was declared lost while running here: killing its process (fencing)"
                );
            }
        }
        for id in kill_requested {
            shared.stop_run(id, StopReason::KillRequested);
        }
        if declared_lost > 0 {
            tracing::warn!(count = declared_lost, "runs of dead hosts declared lost");
            shared.wake.notify_one();
        }
        Ok(Beat {
            draining,
            fenced,
            declared_lost,
        })
    }
}

/// The longest a dead host's runs stay `running` before some guardian declares them lost.
pub fn detection_bound(lease: Duration, heartbeat_interval: Duration) -> Duration {
    lease + heartbeat_interval
}

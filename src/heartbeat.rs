//! The heartbeat: this host's liveness, the verdict on hosts that lost theirs, and the
//! deadline the run shims' watchdog enforces.
//!
//! Every `heartbeat_interval`, one statement renews the host's lease and the `heartbeat_at`
//! (and pid) of every run this guardian holds, gives up runs the database says run here but
//! this guardian no longer knows (for a whole lease), and declares the running runs of
//! hosts whose lease has passed `lost` (the database trigger schedules their retries). What
//! it returns drives fencing: a run this host supervises that the database no longer calls
//! running here was taken away (declared lost while this host was paused or cut off), so its
//! processes are killed at once (SIGKILL); a run with a kill request is stopped (a fallback
//! for a missed NOTIFY).
//!
//! # When a guardian may judge others
//!
//! A lease that lapsed proves a host dead only if the host could have renewed it. When the
//! *database* was away (an outage, a restart, a failover), every lease lapses at once and
//! nobody could. So a guardian declares other hosts' runs lost only when both
//! - it has itself been heartbeating without a failure for a whole `lease`, and
//! - the database has been up for a whole `lease` (`pg_postmaster_start_time()`).
//!
//! Every live guardian retries at least once per `heartbeat_interval` (its heartbeat, its
//! start-up), so within one interval of the database's return it has renewed its lease and
//! its runs (re-asserted them). Rescuers wait a whole lease (≥ 2 × heartbeat_interval)
//! after their own return: every guardian that is alive has re-asserted before anyone
//! judges. Healthy jobs are not killed because the database went away; a guardian that did
//! not come back within a lease of the database's return is judged like any dead host, and
//! fences its runs if it returns later. In steady state a dead host's runs are declared lost
//! within `lease + heartbeat_interval` of its last renewal ([`detection_bound`]).
//!
//! # The watchdog deadline
//!
//! After every beat the heartbeat publishes, in [`Shared::lease`], until when this
//! guardian's jobs may run without another renewal; the supervisors forward it to the run
//! shims, which SIGKILL their job when it passes:
//!
//! ```text
//!  beat succeeded  ->  (instant before the statement was sent) + lease
//!                      never later than the database's lease_until: a paused guardian's
//!                      jobs are dead before another host may declare them lost
//!  beat failed     ->  now + lease
//!                      the database is away (or this host is cut off): the guardian is
//!                      alive, its jobs keep running; if the database was reachable for
//!                      others, it fences on its return
//! ```
//! A beat that takes longer than `lease − heartbeat_interval` counts as failed, so a slow
//! database never lets the watchdog kill jobs of a guardian that is alive.
//! Does not own the lease length or interval (config) nor killing (supervisor, shim).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::time::Instant;

use crate::db::q;
use crate::guardian::Shared;
use crate::outage;
use crate::supervisor::StopReason;

/// What one beat found.
#[derive(Debug, Default, Clone)]
pub struct Beat {
    pub draining: bool,
    /// Runs taken away from this host: their processes were told to stop.
    pub fenced: Vec<i64>,
    /// Runs of dead hosts declared lost by this beat.
    pub declared_lost: i64,
    /// Runs of this host that this guardian no longer knew, declared lost by this beat.
    pub forgotten: i64,
}

pub async fn run(shared: Arc<Shared>) {
    let mut heart = Heartbeat {
        shared: shared.clone(),
        connected_since: None,
    };
    let mut every = shared.config().heartbeat_interval;
    let mut ticker = ticker(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shared.abandon.cancelled() => return,
        }
        let config = shared.config();
        let sent = std::time::Instant::now();
        let limit = config.lease.saturating_sub(config.heartbeat_interval);
        let failure = match tokio::time::timeout(limit, heart.run_once()).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                let outage = outage::is_connection_error(&e);
                Some((e, outage))
            }
            Err(_) => Some((
                anyhow!("no answer to the heartbeat within lease - heartbeat_interval ({limit:?})"),
                true,
            )),
        };
        match failure {
            None => {
                shared.outage.ok();
                shared.lease.send_replace(sent + config.lease);
                crate::metrics::load(shared.running_count(), config.capacity);
            }
            Some((e, is_outage)) => {
                crate::metrics::db_error("heartbeat");
                heart.connected_since = None;
                shared
                    .lease
                    .send_replace(std::time::Instant::now() + config.lease);
                if is_outage {
                    shared.outage.failed("heartbeat", &e);
                } else {
                    tracing::warn!(error = %format!("{e:#}"), "heartbeat failed; retrying each interval");
                }
            }
        }
        if config.heartbeat_interval != every {
            every = config.heartbeat_interval;
            ticker = ticker_after(every);
        }
        // Keep beating through shutdown while runs are still being recorded.
        if shared.stopping.is_cancelled() && shared.tasks.is_closed() && shared.tasks.is_empty() {
            return;
        }
    }
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// A ticker whose first tick is one interval away (after a reload changed the interval).
fn ticker_after(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(Instant::now() + every, every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

struct Heartbeat {
    shared: Arc<Shared>,
    /// Since when beats have succeeded without a break.
    connected_since: Option<Instant>,
}

impl Heartbeat {
    async fn run_once(&mut self) -> Result<Beat> {
        let shared = &self.shared;
        let cfg = shared.config();
        let (supervised, mut ids, mut pids): (Vec<i64>, Vec<i64>, Vec<Option<i32>>) = {
            let runs = shared.runs.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<i64> = runs.keys().copied().collect();
            let pids = runs
                .values()
                .map(|h| h.pid.borrow().map(|p| p as i32))
                .collect();
            (ids.clone(), ids, pids)
        };
        for id in shared.held.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if !ids.contains(id) {
                ids.push(*id);
                pids.push(None);
            }
        }
        let since = *self.connected_since.get_or_insert_with(Instant::now);
        let rescue = since.elapsed() >= cfg.lease;
        let client = shared.beat_db.get().await?;
        let statement = client.prepare_cached(q::HEARTBEAT).await?;
        let row = client
            .query_one(
                &statement,
                &[
                    &shared.host,
                    &cfg.lease.as_secs_f64(),
                    &(cfg.capacity as i32),
                    &ids,
                    &pids,
                    &cfg.pools,
                    &rescue,
                    &shared.incarnation,
                ],
            )
            .await?;
        let draining: Option<bool> = row.get("draining");
        let holder: Option<chrono::DateTime<chrono::Utc>> = row.get("holder");
        if draining.is_none() && holder.is_some() {
            // The row is another process's: this one's lease lapsed (a pause) and a guardian
            // with the same host_name registered meanwhile. Two processes must never act as
            // one host: this one stops (see `Shared::fail`).
            shared.fail(format!(
                "another guardian process took over its host name {:?} after its lease lapsed \
                 (was this process paused, or do two hosts share one host_name?)",
                shared.host
            ));
            return Ok(Beat::default());
        }
        let alive: HashSet<i64> = row.get::<_, Vec<i64>>("alive").into_iter().collect();
        let kill_requested: Vec<i64> = row.get("kill_requested");
        let declared_lost: i64 = row.get("lost");
        let forgotten: i64 = row.get("unknown");
        if draining.is_none() {
            // The host row is gone (deleted by hand): announce ourselves again.
            client
                .execute(
                    q::HOSTS_REANNOUNCE,
                    &[
                        &shared.host,
                        &cfg.pools,
                        &env!("CARGO_PKG_VERSION"),
                        &cfg.lease.as_secs_f64(),
                        &(cfg.capacity as i32),
                        &shared.incarnation,
                    ],
                )
                .await?;
        }
        let draining = draining.unwrap_or(false);
        if shared.draining.swap(draining, Ordering::Relaxed) != draining {
            tracing::info!(draining, "host drain state changed");
            shared.wake.notify_one();
        }
        let fenced: Vec<i64> = supervised
            .iter()
            .copied()
            .filter(|id| !alive.contains(id))
            .collect();
        for id in &fenced {
            if shared.stop_run(*id, StopReason::Fenced) {
                tracing::warn!(
                    run_id = id,
                    "run was declared lost while running here: killing its processes (fencing)"
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
        if forgotten > 0 {
            tracing::warn!(
                count = forgotten,
                "runs the database said were running here, unknown to this guardian, declared lost"
            );
        }
        Ok(Beat {
            draining,
            fenced,
            declared_lost,
            forgotten,
        })
    }
}

/// The longest a dead host's runs stay `running` before some guardian declares them lost,
/// counted from the host's last renewal, when the database and the other guardians have been
/// up for a whole lease.
pub fn detection_bound(lease: Duration, heartbeat_interval: Duration) -> Duration {
    lease + heartbeat_interval
}

//! The heartbeat: this host's liveness, the verdict on hosts that lost theirs, and the
//! deadline the run shims' watchdog enforces.
//!
//! Every `heartbeat_interval`, one statement renews the host's lease and the `heartbeat_at`
//! (and pid) of every run this guardian holds, gives up runs the database says run here but
//! this guardian no longer knows (for a whole lease), and, in the one guardian that holds
//! the `rescue` lease (`sisy.leases`, taken over and renewed by the same statement; see
//! `heartbeat.sql`), declares the running runs of hosts whose lease has passed `lost` (the
//! database trigger schedules their retries). A beat's own work reads only this host's row
//! and runs, so it does not grow with the fleet. What
//! it returns drives fencing: a run this host supervises that the database no longer calls
//! running here was taken away (declared lost while this host was paused or cut off), so its
//! processes are killed at once (SIGKILL); a run with a kill request is stopped (a fallback
//! for a missed NOTIFY).
//!
//! The rescue of dead hosts' and forgotten runs is not a service of its own: it is part of
//! the renewal statement (`heartbeat.sql`), one round trip per beat, and it may judge others
//! only on what that same beat proves (an unbroken lease of successful beats). A separate
//! rescuer would need a second statement per interval and the heartbeat's own record.
//! Does not own the runs (the run table) nor what a stop does (supervisor, shim).
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
//! within `lease + heartbeat_interval` of its last renewal: by the rescue lease's holder, or,
//! when the dead host was the holder (its rescue lease passes no later than its host lease),
//! by the next guardian to beat, which takes the rescue lease over in that beat. Only a
//! guardian that may judge others (the two conditions above) takes or renews it.
//!
//! # The watchdog deadline
//!
//! The heartbeat publishes, in its lease channel, until when this guardian's jobs may run;
//! the supervisors forward it to the run shims, which SIGKILL their job when it passes. Two
//! promises, which pull in opposite directions:
//! - a guardian that is alive never has its jobs killed by its own watchdog, however slow or
//!   silent the database (a beat that takes long but succeeds, a connection that
//!   black-holes);
//! - a guardian that is paused (SIGSTOP, a frozen VM) has its jobs dead before its lease
//!   lapses in the database, so no other guardian starts a retry while they still run.
//!
//! Hence two sources, combined by [`Deadline`] (`L` = lease, `I` = heartbeat_interval,
//! `M` = [`margin`] = I/2):
//!
//! ```text
//!  confirmed  = s + L     s: the instant before the last beat that *succeeded* was sent;
//!                         the database set lease_until = (its now() ≥ s) + L, so this is
//!                         never later than what the database has
//!  published  = confirmed               while confirmed > now + M  (the tight deadline)
//!             = now + L, kept until it  otherwise: the guardian is alive (it runs this very
//!               comes within M, then    code) but has no confirmation, because a beat is
//!               taken again             outstanding or failing
//! ```
//! The stretch is a local timer of the heartbeat task (it wakes at `published − M`), not a
//! beat: it needs nothing from the database and nothing from the ticker, so neither a beat
//! that hangs nor a tick that `MissedTickBehavior::Delay` postponed lets the deadline pass.
//! A guardian that is paused runs no code and so stretches nothing; and once resumed it does
//! not stretch a deadline that has already passed: the shims may have killed their jobs, or
//! be about to, and the lease may be another process's by now. Only a beat that confirms the
//! lease after the resume (`confirmed` later than now) sets a deadline again.
//!
//! Timeline of a healthy guardian paused at `p`, beats every `I` taking `d`:
//!
//! ```text
//!  s (last success sent)   s+I (next beat sent)      p       s+L-M        s+L ≤ lease_until
//!  ────┼───────────────────────┼──────────────────────┼─────────┼────────────┼──────▶
//!      └─ confirmed = s+L; published = confirmed as long as now ≤ s+L−M, which holds at p
//!         whenever p ≤ s+I+d (paused before or in the middle of the next beat; d ≤ M):
//!         the shim kills at s+L, no later than the database lets the lease lapse
//! ```
//! A beat the guardian was paused in the middle of may have renewed the lease in the
//! database; the shims still hold the older, earlier deadline: safe. Only once confirmation
//! has been overdue for `L − M` does the live guardian stretch the deadline; from then on
//! it is in the documented partition case: it cannot tell a database that is away for
//! everyone from one away for itself alone, its jobs run on, and if the others declared
//! them lost meanwhile it fences them the moment it hears from the database again. A
//! success brings the deadline back to the tight one.
//!
//! The supervisors hand the shims the time left, not an instant, so a shim's deadline is
//! later than the published one by the pipe's latency (well under a millisecond on an idle
//! host, a few on a busy one): far less than the time another guardian needs to find the
//! lapsed lease (up to a heartbeat after it) and start a retry.
//!
//! Each beat is bounded by `L − I` (as [`crate::db::within`] does): past it the beat counts
//! as failed, its connection is closed rather than returned to the pool (a silent connection
//! stays silent), and the next beat, at the next tick, opens a new one. The bound counts only
//! the time this process ran (see [`crate::db::within`]): a beat the guardian was paused in the
//! middle of is not a database that did not answer, so a pause logs no outage and closes no
//! connection.
//! Does not own the lease length or interval (config) nor killing (supervisor, shim).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::{self, q};
use crate::outage::{self, Outage};
use crate::run::StopReason;
use crate::run::table::RunTable;
use crate::service::{Draining, Failure, Leads, LiveConfig, slot};

/// What the heartbeat needs: its own connection, this process's registration, the run
/// table it renews and fences, and the lease channel it publishes the watchdog deadline on.
pub struct Heartbeat {
    pub config: LiveConfig,
    /// A pool of the heartbeat's own, so that renewing the lease never waits behind the
    /// other services (say, sixteen results being written at once).
    pub db: Pool,
    pub host: String,
    /// This process's registration of the name (`sisy.hosts.started_at`): the lease is
    /// renewed only while the row is still this registration's.
    pub incarnation: chrono::DateTime<chrono::Utc>,
    pub runs: Arc<RunTable>,
    pub wake: Arc<Notify>,
    pub draining: Draining,
    /// The leases the beat holds (see `Leads`).
    pub leads: Leads,
    pub failure: Arc<Failure>,
    /// Until when this guardian's jobs may run without a renewal: the run shims' watchdog
    /// deadline.
    pub lease: Arc<watch::Sender<std::time::Instant>>,
    pub outage: Arc<Outage>,
    /// The heartbeat beats through shutdown while results are recorded (`tasks`), and ends
    /// once they are (`stopping`, then the tracker empty) or on `abandon` (after the beat in
    /// flight, if any, has its answer).
    pub stopping: CancellationToken,
    pub abandon: CancellationToken,
    pub tasks: TaskTracker,
}

/// The heartbeat's loop; see the module doc.
pub async fn run(shared: Heartbeat) {
    let shared = Arc::new(shared);
    let mut heart = Beater {
        shared: shared.clone(),
        connected_since: None,
    };
    // Start-up published the deadline of the registration: a confirmed one.
    let mut deadline = Deadline::new(*shared.lease.borrow());
    // The first beat at once; then at this host's place in the interval (`slot`), so that a
    // fleet started together does not beat in step.
    let key = format!("{}/heartbeat", shared.host);
    let mut next = Instant::now();
    // One beat at once when the guardian starts to stop: it gives up the pools' leases
    // (`Leads`), which another guardian then takes, rather than keep them through the grace.
    let mut stop_told = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.stopping.cancelled(), if !stop_told => stop_told = true,
            never = keep_alive(&shared, &mut deadline) => match never {},
            _ = shared.abandon.cancelled() => return,
        }
        let config = shared.config.get();
        let sent = std::time::Instant::now();
        let limit = config.lease.saturating_sub(config.heartbeat_interval);
        let beat = db::within(&shared.db, limit, "the heartbeat", heart.run_once());
        // A beat in flight is waited for even on `abandon` (it is bounded by `limit`): the
        // lease is released after the heartbeat ends, and a beat dropped here may still reach
        // the database after that release and renew what it gave up (tokio-postgres sends a
        // statement whether or not its answer is awaited).
        let result = tokio::select! {
            r = beat => r,
            never = keep_alive(&shared, &mut deadline) => match never {},
        };
        match result {
            // The name is another process's: nothing of the lease is this process's to
            // confirm (it is stopping, see `Failure`).
            Ok(Beat::TakenOver) => {}
            Ok(Beat::Renewed) => {
                shared.outage.ok(sent);
                deadline.confirm(sent, config.lease);
                publish(&shared, &mut deadline);
                crate::metrics::load(shared.runs.running_count(), config.capacity);
            }
            Err(e) => {
                crate::metrics::db_error("heartbeat");
                heart.connected_since = None;
                if outage::is_connection_error(&e) {
                    shared.outage.failed("heartbeat", &e);
                } else {
                    tracing::warn!(error = %format!("{e:#}"), "heartbeat failed; retrying each interval");
                }
            }
        }
        // The interval as configured now (a reload applies from the next beat).
        let every = shared.config.get().heartbeat_interval;
        next = Instant::now()
            + slot::next_in(&key, every, sent.elapsed(), std::time::SystemTime::now());
        // Keep beating through shutdown while runs are still being recorded.
        if shared.abandon.is_cancelled()
            || shared.stopping.is_cancelled() && shared.tasks.is_closed() && shared.tasks.is_empty()
        {
            return;
        }
    }
}

/// The watchdog deadline's two sources (see the module doc); pure, times passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Lease end by the last successful beat: never later than the database's lease_until.
    confirmed: std::time::Instant,
    /// What the shims were last told.
    published: std::time::Instant,
}

impl Deadline {
    pub fn new(confirmed: std::time::Instant) -> Deadline {
        Deadline {
            confirmed,
            published: confirmed,
        }
    }

    /// A beat sent at `sent` succeeded.
    pub fn confirm(&mut self, sent: std::time::Instant, lease: Duration) {
        self.confirmed = self.confirmed.max(sent + lease);
    }

    /// The deadline to publish at `now`: the confirmed one while it is at least `margin`
    /// away, else a stretch to `now + lease`, kept until it comes within `margin` itself. A
    /// deadline that has passed, with no confirmation later than `now`, stays passed.
    pub fn renew(
        &mut self,
        now: std::time::Instant,
        lease: Duration,
        margin: Duration,
    ) -> std::time::Instant {
        // Strictly: at `check_at` the deadline is exactly `margin` away and must move, or
        // the keeper would wake again at once.
        self.published = if self.confirmed > now + margin {
            self.confirmed
        } else if self.published > now + margin || self.lapsed(now) {
            self.published
        } else {
            now + lease
        };
        self.published
    }

    /// Whether, at `now`, the published deadline has passed and no beat confirmed the lease
    /// beyond `now`: resumed from a pause, the guardian must not revive it (the module doc).
    pub fn lapsed(&self, now: std::time::Instant) -> bool {
        self.published <= now && self.confirmed <= now
    }

    /// When to look again: when the published deadline comes within `margin`; None once it
    /// has lapsed (only a beat revives it).
    pub fn check_at(
        &self,
        margin: Duration,
        now: std::time::Instant,
    ) -> Option<std::time::Instant> {
        if self.lapsed(now) {
            return None;
        }
        Some(self.published.checked_sub(margin).unwrap_or(self.published))
    }
}

/// How close the published deadline may come before the live guardian stretches it: room
/// for a busy machine to run the heartbeat task, the supervisor and the shim. Half an
/// interval, so that a guardian paused during a beat (shorter than that) is still under the
/// tight deadline (see the module doc).
pub fn margin(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval / 2
}

/// Publishes the deadline for now (and wakes the supervisors only when it changed).
fn publish(shared: &Heartbeat, deadline: &mut Deadline) {
    let config = shared.config.get();
    let at = deadline.renew(
        std::time::Instant::now(),
        config.lease,
        margin(config.heartbeat_interval),
    );
    shared.lease.send_if_modified(|current| {
        let changed = *current != at;
        *current = at;
        changed
    });
}

/// The live guardian's own timer: whenever the published deadline comes within the margin,
/// publishes it again (stretched if no beat confirmed a later one). Never returns.
async fn keep_alive(shared: &Heartbeat, deadline: &mut Deadline) -> Infallible {
    loop {
        let margin = margin(shared.config.get().heartbeat_interval);
        match deadline.check_at(margin, std::time::Instant::now()) {
            Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
            // Lapsed: the next confirmed beat publishes (the loop calls this anew after it).
            None => std::future::pending().await,
        }
        publish(shared, deadline);
    }
}

/// What a beat that the database answered found.
enum Beat {
    /// The lease and the runs were renewed: the beat confirms the lease.
    Renewed,
    /// Another process holds the host name: this process holds no lease.
    TakenOver,
}

struct Beater {
    shared: Arc<Heartbeat>,
    /// Since when beats have succeeded without a break.
    connected_since: Option<Instant>,
}

impl Beater {
    async fn run_once(&mut self) -> Result<Beat> {
        let shared = &self.shared;
        let cfg = shared.config.get();
        let renewal = shared.runs.renewal();
        let (supervised, ids, pids) = (renewal.supervised, renewal.ids, renewal.pids);
        let since = *self.connected_since.get_or_insert_with(Instant::now);
        let rescue = since.elapsed() >= cfg.lease;
        let client = db::checkout(&shared.db).await?;
        let row = db::query_one(
            &client,
            q::HEARTBEAT,
            &[
                &shared.host,
                &cfg.lease.as_secs_f64(),
                &(cfg.capacity as i32),
                &ids,
                &pids,
                &cfg.pools,
                &rescue,
                &shared.incarnation,
                &!shared.stopping.is_cancelled(),
            ],
        )
        .await?;
        let draining: Option<bool> = row.get("draining");
        let holder: Option<chrono::DateTime<chrono::Utc>> = row.get("holder");
        if draining.is_none() && holder.is_some() {
            // The row is another process's: this one's lease lapsed (a pause) and a guardian
            // with the same host_name registered meanwhile. Two processes must never act as
            // one host: this one stops (see `Failure`). Its runs were declared lost by the
            // new holder's start and may be retried already: fenced, killed at once, not
            // stopped with the shutdown's grace.
            for id in shared.runs.running_ids() {
                shared.runs.stop(id, StopReason::Fenced);
            }
            shared.failure.fail(format!(
                "another guardian process took over its host name {:?} after its lease lapsed \
                 (was this process paused, or do two hosts share one host_name?)",
                shared.host
            ));
            return Ok(Beat::TakenOver);
        }
        let alive: HashSet<i64> = row.get::<_, Vec<i64>>("alive").into_iter().collect();
        let kill_requested: Vec<i64> = row.get("kill_requested");
        let declared_lost: i64 = row.get("lost");
        let forgotten: i64 = row.get("unknown");
        let leases: Vec<String> = row.get("leases");
        if draining.is_none() {
            // The host row is gone (deleted by hand): announce ourselves again.
            db::execute(
                &client,
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
        // Every answer is read: the connection may serve the next beat.
        client.release();
        let draining = draining.unwrap_or(false);
        if shared.draining.set(draining) {
            tracing::info!(draining, "host drain state changed");
            shared.wake.notify_one();
        }
        let fenced: Vec<i64> = supervised
            .iter()
            .copied()
            .filter(|id| !alive.contains(id))
            .collect();
        for id in &fenced {
            if shared.runs.stop(*id, StopReason::Fenced) {
                tracing::warn!(
                    run_id = id,
                    "the database no longer has this run running here (declared lost, or its claim lost with the last commits of a failed-over primary): killing its processes (fencing)"
                );
            }
        }
        for id in kill_requested {
            shared.runs.stop(id, StopReason::KillRequested);
        }
        if shared.leads.set_held(leases) {
            // A pool taken over (or given up) changes what the dispatcher sleeps until.
            tracing::debug!(leases = ?shared.leads.held(), "leases held changed");
            shared.wake.notify_one();
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
        Ok(Beat::Renewed)
    }
}

#[cfg(test)]
mod tests;

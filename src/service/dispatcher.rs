//! The dispatcher: the guardian's main loop, from "something is due" to supervised processes.
//!
//! Each pass ([`Dispatcher::run_once`]): one tick statement (expires overdue pending runs, says
//! whether jobs need seeding and when the next job, run and flow deadline fall due, and
//! which runs held here have a kill request: those are stopped), the flows' safety net when
//! it is due (flow timeouts, re-decisions), the scheduler when a job is due, then a claim up
//! to the free capacity and admission, and a supervisor task per started run. Between passes
//! it sleeps until the next due time the database reported, a wake-up (LISTEN/NOTIFY, a
//! finished run) or the safety poll, whichever comes first. Without LISTEN (`listen =
//! false`) the safety poll is `poll_interval`: the tick is then how triggered runs and kill
//! requests are found.
//! Does not own SQL semantics (scheduler, claimer) nor processes (supervisor).
//!
//! Its shape is every service's: [`run`] is the loop (its timer, its wake-up, `stopping`),
//! `run_once` the pass, whose errors are logged (or reported as an outage) and retried with
//! a backoff. It reads the [`LiveConfig`] at every pass rather than a config of its own: a
//! reload's capacity, pools and lease apply from the next pass (a reload wakes it).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use deadpool_postgres::Pool;
use futures_util::FutureExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::{self, q};
use crate::metrics;
use crate::outage::{self, Outage};
use crate::run::launch;
use crate::run::orphans::Registry;
use crate::run::recorder::{self, Recorder, Verdict, Written};
use crate::run::result::Room;
use crate::run::supervisor::{self, Supervision};
use crate::run::table::{RunTable, Started};
use crate::run::users::Policy;
use crate::run::{ClaimedRun, StopReason};
use crate::service::claimer::{Admission, Claimer};
use crate::service::fault::{fault_point, panic_message};
use crate::service::scheduler::{Scheduler, Seed};
use crate::service::{Draining, Failure, Leads, LiveConfig, slot};

/// The longest the dispatcher sleeps without a reason: a lost notification costs at most this.
pub const SAFETY_POLL: Duration = Duration::from_secs(30);

/// The longest the dispatcher sleeps without a reason under `config`: the safety poll with
/// LISTEN, else `poll_interval`, at which the tick finds triggered runs and kill requests.
fn safety_poll(config: &crate::config::GuardianConfig) -> Duration {
    if config.listen {
        SAFETY_POLL
    } else {
        config.poll_interval.min(SAFETY_POLL)
    }
}

/// How often a run waiting for the run it replaces to end asks again.
const REPLACE_POLL: Duration = Duration::from_millis(200);
/// The shortest pause after a pass that made no progress although something looked due
/// (a job locked by another guardian): no busy loop.
const IDLE_BACKOFF: Duration = Duration::from_millis(25);
/// How long a backlog a tick found (runs due now beyond this guardian's free capacity) is
/// claimed from as capacity frees up, without a tick before each claim: draining a queue
/// costs a claim per freed batch, not a tick and a claim. Within it, due jobs are
/// materialised and kill requests found by the tick up to this much later (the listener
/// delivers kills at once); the claim itself never takes an expired run.
const BACKLOG_FRESH: Duration = Duration::from_millis(100);
/// While a backlog is drained, a claim waits until half the capacity is free or this long
/// after capacity first freed: a claim and an admission cost the same for one run as for
/// sixteen, and runs already waiting lose nothing to a few milliseconds.
const BACKLOG_GATHER: Duration = Duration::from_millis(5);

/// What one pass found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// When to look again; None: only on a wake-up (or the safety poll).
    pub next_in: Option<Duration>,
    pub started: usize,
    pub materialised: usize,
}

/// What the dispatcher needs: the pool it claims from, the run table it fills, the lease
/// its supervisors forward, the recorder and registry of the runs it starts.
pub struct Handles {
    pub config: LiveConfig,
    pub db: Pool,
    pub host: String,
    pub runs: Arc<RunTable>,
    /// Its wake-up: a notification, a finished run, a reload.
    pub wake: Arc<Notify>,
    pub draining: Draining,
    /// The leases the heartbeat holds; the dispatcher sets the pools it acts for.
    pub leads: Leads,
    /// Stop claiming (the guardian shuts down).
    pub stopping: CancellationToken,
    /// Stop waiting for the database to take results (the process is about to exit).
    pub abandon: CancellationToken,
    /// The supervisor tasks; shutdown waits on it.
    pub tasks: TaskTracker,
    /// The watchdog deadline the heartbeat publishes, forwarded to each run shim.
    pub lease: Arc<watch::Sender<std::time::Instant>>,
    pub outage: Arc<Outage>,
    pub recorder: Arc<Recorder>,
    pub registry: Registry,
    /// Where the runs' `SISY_RESULT` files go.
    pub results: Arc<Room>,
    /// Told when a supervisor task panics: the guardian stops.
    pub failure: Arc<Failure>,
}

impl Handles {
    /// The user policy of the running configuration.
    fn policy(&self) -> Policy {
        let config = self.config.get();
        Policy {
            host: self.host.clone(),
            default_user: config.default_user.clone(),
            allowed_users: config.allowed_users.clone(),
            lookup_limit: crate::run::users::lookup_limit(config.lease, config.heartbeat_interval),
        }
    }
}

struct Dispatcher {
    shared: Arc<Handles>,
    scheduler: Scheduler,
    /// The pools the scheduler was given (a reload may change them).
    pools: Vec<String>,
    claimer: Claimer,
    /// When this guardian last asked its pools for help (`runs_help.sql`).
    helped: Option<std::time::Instant>,
    /// When the tick was sent that found more runs due than this guardian could take (see
    /// [`BACKLOG_FRESH`]); None when the last claim took fewer than it asked for.
    backlog: Option<std::time::Instant>,
    /// Since when freed capacity has waited for more to free before a backlog claim (see
    /// [`BACKLOG_GATHER`]).
    gathering: Option<std::time::Instant>,
}

/// The dispatcher's loop; returns when the guardian stops.
pub async fn run(handles: Handles) {
    let shared = Arc::new(handles);
    let mut d = Dispatcher::new(shared.clone());
    let mut failures = 0u32;
    let poll_key = format!("{}/poll", shared.host);
    loop {
        // Register interest before the pass, so a wake-up during the pass is not lost.
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let began = std::time::Instant::now();
        let pause = match d.run_once().await {
            Ok(pass) => {
                failures = 0;
                // The poll at this host's place in the period (`slot`): a fleet started
                // together does not poll in step. Never more than a period after this pass
                // began, as before.
                let poll = safety_poll(&shared.config.get());
                let at_slot = slot::next_in(&poll_key, poll, began.elapsed(), SystemTime::now());
                pass.next_in.unwrap_or(poll).min(at_slot)
            }
            Err(e) => {
                failures += 1;
                metrics::db_error("dispatcher");
                if outage::is_connection_error(&e) {
                    shared.outage.failed("dispatcher", &e);
                } else if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(error = %format!("{e:#}"), failures, "dispatcher pass failed; retrying");
                }
                // Backoff, but never slower than a heartbeat: work resumes soon after the
                // database is back.
                Duration::from_millis(100 * u64::from(failures.min(50)))
                    .min(shared.config.get().heartbeat_interval)
            }
        };
        if shared.stopping.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut woken => {}
            _ = shared.stopping.cancelled() => break,
        }
    }
    d.release_waiting().await;
}

impl Dispatcher {
    fn new(shared: Arc<Handles>) -> Dispatcher {
        let pools = shared.config.get().pools.clone();
        let scheduler = Scheduler::new(shared.db.clone(), pools.clone());
        let claimer = Claimer::new(shared.db.clone(), shared.host.clone());
        Dispatcher {
            shared,
            scheduler,
            pools,
            claimer,
            helped: None,
            backlog: None,
            gathering: None,
        }
    }

    /// One pass; see the module doc.
    async fn run_once(&mut self) -> Result<Outcome> {
        let cfg = self.shared.config.get();
        // Full, the pass ticks: it may ask the pool for help (see `ask_for_help`).
        if let Some(found) = self.backlog
            && found.elapsed() < BACKLOG_FRESH
            && self.free_capacity(cfg.capacity) > 0
            && cfg.pools == self.pools
            && !self.shared.draining.get()
            && !self.shared.stopping.is_cancelled()
        {
            return self.drain_backlog(&cfg, found).await;
        }
        self.backlog = None;
        self.gathering = None;
        if cfg.pools != self.pools {
            self.pools = cfg.pools.clone();
            self.scheduler.set_pools(self.pools.clone());
        }
        // Every step is bounded: a silent database must not stall the dispatcher for good.
        let pool = &self.shared.db;
        let limit = db::answer_limit(cfg.lease);
        let sent = std::time::Instant::now();
        let tick = db::within(pool, limit, "the dispatcher's tick", async {
            let client = db::checkout(pool).await?;
            // One round trip, no parse or plan per pass (see `db::query`).
            let held = self.shared.leads.held();
            let tick = db::query_one(
                &client,
                q::RUNS_TICK,
                &[&cfg.pools, &self.shared.host, &held],
            )
            .await?;
            client.release();
            Ok(tick)
        })
        .await?;
        self.shared.outage.ok(sent);
        let unseen: bool = tick.get("unseen");
        let job_due_in: Option<f64> = tick.get("job_due_in");
        let run_due_in: Option<f64> = tick.get("run_due_in");
        let wake_in: Option<f64> = tick.get("wake_in");
        let acting: Vec<String> = tick.get("acting");
        let tend: bool = tick.get("tend");
        // The flows' safety net is the `tend` lease holder's (or anyone's while nobody holds it).
        let mut flow_due_in: Option<f64> =
            tick.get::<_, Option<f64>>("flow_due_in").filter(|_| tend);
        self.shared.leads.set_acting(acting.clone(), tend);
        // Kill requests on runs held here: the listener's `sisy_kill` stops them first when
        // it runs; without it (listen = false) this is the kill's way in.
        for id in tick.get::<_, Vec<i64>>("kill_requested") {
            self.shared.runs.stop(id, StopReason::KillRequested);
        }
        let mut pass = Outcome::default();
        if flow_due_in.is_some_and(|s| s <= 0.0) {
            // The flows' safety net: timeouts and re-decisions (see sql/queries/flows_tend.sql).
            // Said and tried again at the next pass; never in the way of claiming.
            let tend = db::within(pool, limit, "the flows' safety net", async {
                let client = db::checkout(pool).await?;
                db::execute(&client, q::FLOWS_TEND, &[]).await?;
                client.release();
                Ok(())
            })
            .await;
            if let Err(e) = tend {
                tracing::warn!(error = %format!("{e:#}"), "the flows' safety net failed; trying again");
                // Not at once: at the safety poll, rather than a busy loop on a lasting error.
                flow_due_in = None;
            }
        }
        let mut progress = false;
        let job_due = job_due_in.is_some_and(|s| s <= 0.0);
        // New jobs are seeded by the guardians acting for a pool or tending, not by all.
        let unseen = unseen && (tend || !acting.is_empty());
        if unseen || job_due {
            let o = db::within(
                pool,
                limit,
                "the scheduler",
                self.scheduler
                    .run_once(if unseen { Seed::Unseen } else { Seed::Skip }, &acting),
            )
            .await?;
            pass.materialised = o.runs;
            progress |= o.more || o.seeded > 0 || o.jobs > 0;
        }
        let free = self.free_capacity(cfg.capacity);
        if self.shared.stopping.is_cancelled() {
            return Ok(pass);
        }
        // More runs fell due at once than this guardian can take (20 jobs on the same
        // minute, a capacity of 16): the pool's other guardians are woken before this one
        // claims, so they claim the rest alongside it rather than after its claim, its
        // starts and another tick of its own.
        if pass.materialised > free && !acting.is_empty() && !self.shared.draining.get() {
            self.ask_for_help(&acting).await;
        }
        let mut claimed = Vec::new();
        // Only when something is due: an idle pass (a poll) costs the tick alone.
        let due = run_due_in.is_some_and(|s| s <= 0.0) || pass.materialised > 0;
        if free > 0 && !self.shared.draining.get() && due {
            claimed = self.claim(&cfg.pools, free, limit).await?;
            if claimed.len() == free {
                // More may wait: claimed from as capacity frees, without a tick each time.
                self.backlog = Some(sent);
            }
            progress |= claimed.len() == free;
        }
        // Waiting runs already count against capacity: admitted again on every pass, even
        // when nothing new may be claimed (a kill of one ends it here, see `claimer`).
        claimed.append(&mut self.shared.runs.take_waiting());
        pass.started = self.admit_and_start(claimed).await?;
        pass.next_in = if progress {
            Some(Duration::ZERO)
        } else {
            // A run due now that this host cannot take (no free capacity, draining) is no
            // reason to look again: the finish of a run or a notification wakes us.
            let cannot_claim = self.free_capacity(cfg.capacity) == 0 || self.shared.draining.get();
            // Full, and due runs of the pools it acts for wait: a few others are asked; again
            // after a short pause while they still wait.
            let mut help_again = None;
            if cannot_claim && !acting.is_empty() && wake_in.is_some_and(|s| s <= 0.0) {
                help_again = self.ask_for_help(&acting).await.map(|d| d.as_secs_f64());
            }
            // Only what is this guardian's to wake for (`wake_in`: the pools it acts for, its
            // own runs): a run due in any pool is everyone's to claim, no one's to wake for.
            let wake_in = wake_in.filter(|s| !(cannot_claim && *s <= 0.0));
            let mut next = [job_due_in, wake_in, flow_due_in, help_again]
                .into_iter()
                .flatten()
                // Clamped: a far-off or odd due time is no reason to sleep past the poll.
                .map(|s| db::secs(Some(s)).min(SAFETY_POLL))
                .min();
            if self.shared.runs.has_waiting() {
                next = Some(next.map_or(REPLACE_POLL, |n| n.min(REPLACE_POLL)));
            }
            // Due now yet not taken by this pass (locked by another guardian): a short pause
            // instead of a busy loop. A due time in the future is slept to exactly.
            next.map(|n| if n.is_zero() { IDLE_BACKOFF } else { n })
        };
        Ok(pass)
    }

    /// A pass while a backlog is fresh: claim what capacity has freed, no tick (see
    /// [`BACKLOG_FRESH`]). Once a claim takes fewer runs than it asked for, the backlog is
    /// over and the next pass ticks again.
    async fn drain_backlog(
        &mut self,
        cfg: &crate::config::GuardianConfig,
        found: std::time::Instant,
    ) -> Result<Outcome> {
        let free = self.free_capacity(cfg.capacity);
        let since = *self.gathering.get_or_insert_with(std::time::Instant::now);
        if free * 2 < cfg.capacity && since.elapsed() < BACKLOG_GATHER {
            // The end of a run wakes it; at the latest, the gathering ends.
            return Ok(Outcome {
                next_in: Some(BACKLOG_GATHER - since.elapsed()),
                ..Outcome::default()
            });
        }
        self.gathering = None;
        let mut claimed = self
            .claim(&cfg.pools, free, db::answer_limit(cfg.lease))
            .await?;
        let more = claimed.len() == free;
        if !more {
            self.backlog = None;
        }
        claimed.append(&mut self.shared.runs.take_waiting());
        let started = self.admit_and_start(claimed).await?;
        // More to take: at once (full, that pass ticks and may ask for help). Else the next
        // pass ticks, at the latest when the backlog's freshness would have ended.
        let next_in = if more {
            Duration::ZERO
        } else {
            BACKLOG_FRESH.saturating_sub(found.elapsed())
        };
        Ok(Outcome {
            next_in: Some(next_in),
            started,
            materialised: 0,
        })
    }

    /// Claims up to `free` due runs of `pools`, less those this guardian has already.
    async fn claim(
        &mut self,
        pools: &[String],
        free: usize,
        limit: Duration,
    ) -> Result<Vec<ClaimedRun>> {
        let claim = self.claimer.claim(pools, free);
        let mut claimed = db::within(&self.shared.db, limit, "the claim", claim)
            .await
            .inspect_err(|_| metrics::claim_error())?;
        // A run this guardian has already, claimed again: the database lost its claim (a
        // failover that lost the last commits put it back to pending) while its process
        // runs here or its result is being written. What has it keeps it (its end is
        // recorded on the row, running here again); a second process would run it twice.
        claimed.retain(|run| {
            let known = self.shared.runs.knows(run.id);
            if known {
                tracing::warn!(
                    job = %run.job_name,
                    run_id = run.id,
                    "run claimed again while this guardian still has it (the database had lost its claim, as a failover that loses the last commits does): no second process starts; the one that has it records its end"
                );
            }
            !known
        });
        Ok(claimed)
    }

    /// At shutdown: runs claimed but never started (waiting to replace another) end as
    /// killed by the shutdown, which retries them where the job allows. Their results are
    /// written by tasks of the task tracker, like those of finished runs, so that the
    /// shutdown sequence bounds them the same way (database or spool).
    async fn release_waiting(&mut self) {
        let verdict = Verdict {
            state: "killed",
            error: Some("guardian shutdown before the run started".into()),
            no_retry: false,
        };
        for run in self.shared.runs.take_waiting() {
            let outcome = crate::run::Outcome::default();
            let entry =
                recorder::entry(&self.shared.host, run.id, &run.job_name, &verdict, &outcome);
            let shared = self.shared.clone();
            self.shared.tasks.spawn(async move {
                if let Err(e) = shared.recorder.record(&entry, &shared.abandon).await {
                    tracing::warn!(run_id = run.id, error = %e, "could not release a claimed run at shutdown; its result stays in the spool");
                }
                shared.runs.finished(run.id);
            });
        }
    }

    /// The pools this guardian acts for have runs due that it cannot take (it is full): a few
    /// other guardians of those pools with free capacity are woken (those that listen; the
    /// others poll). Best effort; returns when to look again (and ask others if the runs
    /// still wait): each ask wakes some guardians, so not at every pass.
    async fn ask_for_help(&mut self, pools: &[String]) -> Option<Duration> {
        const EVERY: Duration = Duration::from_millis(100);
        if let Some(at) = self.helped.filter(|at| at.elapsed() < EVERY) {
            return Some(EVERY - at.elapsed().min(EVERY));
        }
        self.helped = Some(std::time::Instant::now());
        let db = &self.shared.db;
        let limit = db::answer_limit(self.shared.config.get().lease);
        let asked = db::within(db, limit, "asking the pool for help", async {
            let client = db::checkout(db).await?;
            db::query(&client, q::RUNS_HELP, &[&pools, &self.shared.host]).await?;
            client.release();
            Ok(())
        })
        .await;
        if let Err(e) = asked {
            tracing::debug!(error = %format!("{e:#}"), "could not wake the pool's other guardians");
        }
        Some(EVERY)
    }

    fn free_capacity(&self, capacity: usize) -> usize {
        self.shared.runs.free(capacity)
    }

    async fn admit_and_start(&mut self, mut claimed: Vec<ClaimedRun>) -> Result<usize> {
        if claimed.is_empty() {
            return Ok(0);
        }
        // Claimed, not started yet: the heartbeat must keep them while admission runs.
        for run in &claimed {
            self.shared.runs.hold(run.id);
        }
        let limit = db::answer_limit(self.shared.config.get().lease);
        let admission = self.claimer.admit(&mut claimed);
        let decisions = match db::within(&self.shared.db, limit, "admission", admission).await {
            Ok(d) => d,
            Err(e) => {
                // The claimed runs stay ours: keep them and decide again on the next pass.
                for run in claimed {
                    self.shared.runs.wait(run);
                }
                return Err(e);
            }
        };
        let mut started = 0;
        for run in claimed {
            match decisions.get(&run.id) {
                Some(Admission::Start { latency }) => {
                    self.start(run, *latency);
                    started += 1;
                }
                Some(Admission::Wait { victims }) => {
                    tracing::debug!(
                        run_id = run.id,
                        ?victims,
                        "waiting for replaced runs to end"
                    );
                    self.shared.runs.wait(run);
                }
                Some(Admission::Killed) => {
                    self.shared.runs.release(run.id);
                    tracing::info!(job = %run.job_name, run_id = run.id, "run killed before it started: its process never ran");
                }
                Some(Admission::Released) => {
                    self.shared.runs.release(run.id);
                    tracing::debug!(job = %run.job_name, run_id = run.id, "run back to pending: its job is at its max_concurrency");
                }
                Some(Admission::Skipped) => {
                    self.shared.runs.release(run.id);
                    tracing::info!(job = %run.job_name, run_id = run.id, "run skipped: the previous run is still running (overlap = forbid)");
                }
                // Not admitted and not decided: it was taken from us in the meantime.
                None => self.shared.runs.release(run.id),
            }
        }
        Ok(started)
    }

    /// Starts the supervisor task of an admitted run.
    fn start(&self, run: ClaimedRun, latency: Duration) {
        let shared = self.shared.clone();
        // A stop that arrived while the run was held (a kill during admission) is its first
        // word: the supervisor then never starts the process (see `RunTable::start`).
        let started = shared.runs.start(run.id, &run.job_name);
        let tasks = shared.tasks.clone();
        tasks.spawn(async move { supervise(&shared, run, latency, started).await });
    }
}

/// Runs one admitted run to its recorded end. A panic while supervising it (a bug) is
/// caught: the run is recorded `failed` with the reason (its shim, whose control pipe
/// closed, stops the job) and the guardian is told to stop (see `guardian`).
async fn supervise(shared: &Arc<Handles>, run: ClaimedRun, latency: Duration, started: Started) {
    let (id, job) = (run.id, run.job_name.clone());
    let supervised = AssertUnwindSafe(supervise_run(shared, run, latency, started))
        .catch_unwind()
        .await;
    let Err(panic) = supervised else {
        return;
    };
    let why = panic_message(panic.as_ref());
    tracing::error!(run_id = id, job = %job, reason = %why, "the supervisor task of a run panicked");
    let verdict = Verdict {
        state: "failed",
        error: Some(format!(
            "the guardian on {} failed while supervising this run (a bug: {why}); its run shim stops the job",
            shared.host
        )),
        no_retry: false,
    };
    let entry = recorder::entry(&shared.host, id, &job, &verdict, &Default::default());
    if let Err(e) = shared.recorder.record(&entry, &shared.abandon).await {
        tracing::error!(run_id = id, error = %e, "result not recorded; it stays in the spool for the next start");
    }
    shared.runs.finished(id);
    shared.failure.fail(format!(
        "the supervisor task of run {id} panicked ({why}; a bug: please report it)"
    ));
}

/// [`supervise`] without the safety net.
async fn supervise_run(
    shared: &Arc<Handles>,
    run: ClaimedRun,
    latency: Duration,
    started: Started,
) {
    fault_point("supervisor");
    let host = &shared.host;
    let cfg = shared.config.get();
    let stopped_early = started.stop.borrow().clone();
    let (outcome, verdict) = if let Some(reason) = stopped_early {
        shared.runs.process_ended(run.id);
        let outcome = crate::run::Outcome {
            stopped: Some(reason),
            ..crate::run::Outcome::default()
        };
        let mut verdict = recorder::verdict(&outcome, run.max_runtime, host);
        verdict.error = verdict
            .error
            .map(|e| format!("{e} before it started (its process never ran)"));
        (outcome, verdict)
    } else {
        match launch::spec(&run, &shared.policy(), cfg.output_limit, &shared.results).await {
            Ok(spec) => {
                tracing::info!(
                    job = %run.job_name, run_id = run.id, attempt = run.attempt, host = %host,
                    user = %spec.identity.name, latency_ms = latency.as_millis() as u64, "run started"
                );
                metrics::run_started(&run.job_name, latency);
                let supervision = Supervision {
                    stop: started.stop,
                    pid: started.pid,
                    lease: shared.lease.subscribe(),
                    registry: Some(shared.registry.clone()),
                };
                let outcome = supervisor::run(spec, supervision).await;
                // The process is gone: from here on only the result remains to be written. It is
                // held (the heartbeat keeps renewing it) but no longer supervised (a heartbeat
                // must not mistake the finished run for one taken away).
                shared.runs.process_ended(run.id);
                let verdict = recorder::verdict(&outcome, run.max_runtime, host);
                (outcome, verdict)
            }
            Err(refusal) => {
                let verdict = Verdict {
                    state: "failed",
                    error: Some(refusal.error),
                    no_retry: refusal.final_,
                };
                shared.runs.process_ended(run.id);
                (crate::run::Outcome::default(), verdict)
            }
        }
    };
    let entry = recorder::entry(host, run.id, &run.job_name, &verdict, &outcome);
    let written = shared.recorder.record(&entry, &shared.abandon).await;
    tracing::info!(
        job = %run.job_name, run_id = run.id, attempt = run.attempt, host = %host,
        state = verdict.state, exit_code = outcome.exit_code, signal = outcome.signal,
        duration_ms = outcome.duration.as_millis() as u64, error = verdict.error.as_deref().unwrap_or(""),
        "run finished"
    );
    metrics::run_finished(&run.job_name, verdict.state, outcome.duration);
    match written {
        Ok(Written::Fenced) => tracing::warn!(
            run_id = run.id,
            "run was no longer this host's in the database (declared lost, or lost in a failover); its processes were killed here and its result is only in this log"
        ),
        Ok(Written::Late) => tracing::warn!(
            run_id = run.id,
            "run had been declared lost before its result arrived; the result was noted on it"
        ),
        Ok(Written::Recorded) => {}
        Err(e) => {
            tracing::error!(run_id = run.id, error = %e, "result not recorded: the database stayed unreachable; it stays in the spool for the next start")
        }
    }
    // Capacity freed: the dispatcher may claim again (`finished` wakes it).
    shared.runs.finished(run.id);
    if run.max_concurrency.is_some() && !shared.abandon.is_cancelled() {
        wake_pool(shared, run.id).await;
    }
}

/// Wakes every guardian of the pool of run `id`, a run of a capped job that ended: its slot
/// may be taken anywhere. Best effort: a guardian not woken finds it at its safety poll.
async fn wake_pool(shared: &Arc<Handles>, id: i64) {
    let pool = &shared.db;
    let limit = db::answer_limit(shared.config.get().lease);
    let woken = db::within(pool, limit, "waking the pool", async {
        let client = db::checkout(pool).await?;
        db::query(&client, q::RUNS_WAKE_POOL, &[&id]).await?;
        client.release();
        Ok(())
    })
    .await;
    if let Err(e) = woken {
        tracing::debug!(run_id = id, error = %format!("{e:#}"), "could not wake the pool after a capped run ended");
    }
}

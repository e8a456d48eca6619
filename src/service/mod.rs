//! The guardian's background services, each found by its name: `dispatcher` (the main
//! loop: tick, `scheduler`, `claimer`, a supervisor task per started run), `heartbeat`
//! (lease, runs, dead hosts, fencing, the watchdog deadline), `listener` (LISTEN/NOTIFY),
//! `reaper` (history); `slot` places each host's periodic statements in their period.
//!
//! Each service takes the narrow handles it needs — a pool, the [`RunTable`], a wake-up,
//! a token, the [`LiveConfig`] — never the guardian's whole state, and none imports the
//! guardian that spawns them (ARCHITECTURE: a room imports only what is below it). This
//! module defines the handles that are not a run's (those are in `run`). Does not own the
//! order of start-up or shutdown (guardian).
//!
//! [`RunTable`]: crate::run::table::RunTable

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio_util::sync::CancellationToken;

use crate::config::GuardianConfig;

pub mod claimer;
pub(crate) mod dispatcher;
pub(crate) mod fault;
pub(crate) mod heartbeat;
pub(crate) mod listener;
pub mod reaper;
pub(crate) mod scheduler;
pub mod slot;

/// The running configuration, replaced as a whole by a reload. Read it once per decision
/// ([`LiveConfig::get`]), so that one decision sees one configuration.
#[derive(Clone)]
pub struct LiveConfig(Arc<RwLock<Arc<GuardianConfig>>>);

impl LiveConfig {
    pub fn new(config: GuardianConfig) -> LiveConfig {
        LiveConfig(Arc::new(RwLock::new(Arc::new(config))))
    }

    /// The configuration now.
    pub fn get(&self) -> Arc<GuardianConfig> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the configuration (a reload).
    pub fn replace(&self, config: GuardianConfig) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

/// A failure that must stop the guardian (a supervisor task panicked, another process took
/// the host name): the first reason is kept; [`Failure::token`] fires with it.
#[derive(Default)]
pub struct Failure {
    token: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Failure {
    /// Reports a failure (the first one is kept as the reason).
    pub fn fail(&self, why: String) {
        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if reason.is_none() {
            *reason = Some(why);
        }
        self.token.cancel();
    }

    /// Fires on the first failure.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why the guardian failed, if it did.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Whether this host drains (set by the heartbeat from the host row): a draining host
/// claims nothing new.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the state; whether it changed.
    pub fn set(&self, draining: bool) -> bool {
        self.0.swap(draining, Ordering::Relaxed) != draining
    }
}

/// Who does what no two guardians need to do (see `runs_tick.sql`): the leases this guardian
/// holds, as its heartbeat last renewed them (`rescue`, `tend`, `pool:<name>`), and, since
/// the dispatcher's last tick, the pools it acts for (those whose lease it holds or nobody
/// holds: it materialises their jobs and its listener forwards their wake-ups) and whether
/// it tends (the flows' safety net and housekeeping).
#[derive(Clone, Default)]
pub struct Leads(Arc<RwLock<Lead>>);

#[derive(Default)]
struct Lead {
    held: Vec<String>,
    acting: Vec<String>,
    tending: bool,
}

impl Leads {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Lead> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Lead> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The leases held after the last beat.
    pub fn held(&self) -> Vec<String> {
        self.read().held.clone()
    }

    /// Sets the leases held; whether they changed.
    pub fn set_held(&self, leases: Vec<String>) -> bool {
        let mut lead = self.write();
        let changed = lead.held != leases;
        lead.held = leases;
        changed
    }

    /// Whether the dispatcher acts for `pool`.
    pub fn acts_for(&self, pool: &str) -> bool {
        self.read().acting.iter().any(|p| p == pool)
    }

    /// Whether this guardian tends (its housekeeping runs).
    pub fn tending(&self) -> bool {
        self.read().tending
    }

    /// What the dispatcher's tick found: the pools it acts for, whether it tends.
    pub fn set_acting(&self, pools: Vec<String>, tending: bool) {
        let mut lead = self.write();
        lead.acting = pools;
        lead.tending = tending;
    }
}

//! The run table: every run this guardian holds, through its whole life on this host, and
//! the capacity they take.
//!
//! ```text
//!  claimed ──hold──▶ held (no process) ──start──▶ running (a handle: stop, pid)
//!     │                 │    ▲                          │ process ended
//!     │ replace: wait   │    └──────── held ◀───────────┘ (result being written)
//!     ▼                 ▼                               │
//!  waiting (also held)  early stop kept for the start   └─ finished: forgotten, capacity freed
//! ```
//! A run is *held* while this guardian answers for it without a process (claimed and being
//! admitted, waiting for the run it replaces, or ended with its result not yet written): the
//! heartbeat renews held runs too, so the database does not take them for runs this host
//! forgot. A stop that arrives for a held run is kept and becomes the first word of its
//! start, so a kill before the start is never dropped. Everything sits under one lock, so
//! a run being started either has its handle here or finds its early stop.
//!
//! Owns no task and no SQL: the dispatcher moves runs through these states, the heartbeat
//! and the listener stop them, the shutdown waits for them. Imports no service.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::run::{ClaimedRun, StopReason};

/// The runs of this guardian; see the module doc.
pub struct RunTable {
    inner: Mutex<Inner>,
    /// Wakes the dispatcher: a run finished (capacity freed) or a held run must be stopped.
    wake: Arc<Notify>,
    /// Notified each time a run's process has ended: shutdown waits on it.
    ended: Notify,
}

#[derive(Default)]
struct Inner {
    /// Runs with a process (or about to start one), by run id: what counts against capacity.
    running: HashMap<i64, RunHandle>,
    /// Runs held without a process.
    held: HashSet<i64>,
    /// Stop requests for held runs, applied when their process would start.
    early_stops: HashMap<i64, StopReason>,
    /// Runs claimed with overlap = replace, waiting for the run they replace to end (also
    /// held). They count against capacity.
    waiting: Vec<ClaimedRun>,
}

/// A run with a process here.
struct RunHandle {
    job_name: String,
    /// Tells the supervisor to stop the process, and why.
    stop: watch::Sender<Option<StopReason>>,
    /// The process id once started (heartbeats carry it to the database).
    pid: watch::Receiver<Option<u32>>,
}

/// What a supervisor needs of its entry: its stop requests (the first one may already be
/// there) and where to publish the process id.
pub struct Started {
    pub stop: watch::Receiver<Option<StopReason>>,
    pub pid: watch::Sender<Option<u32>>,
}

/// The runs a heartbeat renews: ids, process ids where known, and which of them have a
/// process (only those can be fenced).
#[derive(Debug, Default)]
pub struct Renewal {
    pub ids: Vec<i64>,
    pub pids: Vec<Option<i32>>,
    pub supervised: Vec<i64>,
}

impl RunTable {
    pub fn new(wake: Arc<Notify>) -> RunTable {
        RunTable {
            inner: Mutex::new(Inner::default()),
            wake,
            ended: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Free places out of `capacity`: running and waiting runs take one each.
    pub fn free(&self, capacity: usize) -> usize {
        let t = self.lock();
        capacity.saturating_sub(t.running.len() + t.waiting.len())
    }

    /// Runs with a process here.
    pub fn running_count(&self) -> usize {
        self.lock().running.len()
    }

    /// Ids of the runs with a process here.
    pub fn running_ids(&self) -> Vec<i64> {
        self.lock().running.keys().copied().collect()
    }

    /// Whether run `id` is this guardian's already: with a process, held or waiting.
    pub fn knows(&self, id: i64) -> bool {
        let t = self.lock();
        t.running.contains_key(&id) || t.held.contains(&id) || t.waiting.iter().any(|r| r.id == id)
    }

    /// Run `id` is this guardian's without a process (claimed, or its result pending).
    pub fn hold(&self, id: i64) {
        self.lock().held.insert(id);
    }

    /// Run `id` is no longer held; a stop kept for it is dropped with it.
    pub fn release(&self, id: i64) {
        let mut t = self.lock();
        t.held.remove(&id);
        t.early_stops.remove(&id);
    }

    /// Keeps `run` (held) until the run it replaces has ended.
    pub fn wait(&self, run: ClaimedRun) {
        self.lock().waiting.push(run);
    }

    /// Hands back the waiting runs (to be admitted again, or released at shutdown).
    pub fn take_waiting(&self) -> Vec<ClaimedRun> {
        std::mem::take(&mut self.lock().waiting)
    }

    /// Whether runs wait for the runs they replace.
    pub fn has_waiting(&self) -> bool {
        !self.lock().waiting.is_empty()
    }

    /// Gives held run `id` its handle: from here a stop reaches its supervisor. A stop that
    /// arrived while it was held is its first word (the supervisor then never starts it).
    pub fn start(&self, id: i64, job_name: &str) -> Started {
        let mut t = self.lock();
        let early = t.early_stops.remove(&id);
        let (stop_tx, stop_rx) = watch::channel(early);
        let (pid_tx, pid_rx) = watch::channel(None);
        t.running.insert(
            id,
            RunHandle {
                job_name: job_name.to_string(),
                stop: stop_tx,
                pid: pid_rx,
            },
        );
        t.held.remove(&id);
        Started {
            stop: stop_rx,
            pid: pid_tx,
        }
    }

    /// Run `id`'s process has ended: it is held while its result is written.
    pub fn process_ended(&self, id: i64) {
        let mut t = self.lock();
        t.held.insert(id);
        t.running.remove(&id);
        drop(t);
        self.ended.notify_waiters();
    }

    /// Run `id` is done here (its result written or spooled): forgotten, its place freed.
    pub fn finished(&self, id: i64) {
        let mut t = self.lock();
        t.running.remove(&id);
        t.held.remove(&id);
        t.early_stops.remove(&id);
        drop(t);
        self.ended.notify_waiters();
        self.wake.notify_one();
    }

    /// Sends a stop request to run `id` if it runs here, or keeps it for its start if the
    /// run is held; whether the run is this guardian's.
    pub fn stop(&self, id: i64, reason: StopReason) -> bool {
        let mut t = self.lock();
        if let Some(h) = t.running.get(&id) {
            // Asked again for the same reason (each heartbeat, each poll of the dispatcher
            // while the process ends): nothing new to say or to do. Fencing is sent each
            // time: the supervisor kills again.
            if reason == StopReason::Fenced || h.stop.borrow().as_ref() != Some(&reason) {
                tracing::info!(run_id = id, job = %h.job_name, ?reason, "stopping run");
                h.stop.send_replace(Some(reason));
            }
            return true;
        }
        if !t.held.contains(&id) {
            return false;
        }
        tracing::info!(
            run_id = id,
            ?reason,
            "stopping run before its process starts"
        );
        t.early_stops.insert(id, reason);
        drop(t);
        // Waiting runs are admitted again at once: admission ends them (see `claimer`).
        self.wake.notify_one();
        true
    }

    /// The runs to renew, for a heartbeat.
    pub fn renewal(&self) -> Renewal {
        let t = self.lock();
        let mut r = Renewal::default();
        for (id, h) in &t.running {
            r.ids.push(*id);
            r.pids.push(h.pid.borrow().map(|p| p as i32));
        }
        r.supervised = r.ids.clone();
        for id in &t.held {
            if !t.running.contains_key(id) {
                r.ids.push(*id);
                r.pids.push(None);
            }
        }
        r
    }

    /// Waits up to `limit` until no process of this guardian runs; whether none does.
    pub async fn until_no_process(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.running_count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return self.running_count() == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_before_the_start_is_the_first_word_of_the_start() {
        let table = RunTable::new(Arc::new(Notify::new()));
        assert!(!table.stop(1, StopReason::KillRequested), "not ours yet");
        table.hold(1);
        assert!(table.stop(1, StopReason::KillRequested));
        let started = table.start(1, "j");
        assert_eq!(*started.stop.borrow(), Some(StopReason::KillRequested));
        assert!(table.stop(1, StopReason::Fenced));
        assert_eq!(*started.stop.borrow(), Some(StopReason::Fenced));
        assert_eq!(table.free(2), 1);
        table.process_ended(1);
        assert_eq!(
            table.renewal().ids,
            vec![1],
            "held while its result is written"
        );
        assert!(table.renewal().supervised.is_empty());
        table.finished(1);
        assert!(table.renewal().ids.is_empty());
        assert_eq!(table.free(2), 2);
    }

    #[test]
    fn a_released_run_forgets_its_early_stop() {
        let table = RunTable::new(Arc::new(Notify::new()));
        table.hold(2);
        table.stop(2, StopReason::Shutdown);
        table.release(2);
        table.hold(2);
        assert_eq!(*table.start(2, "j").stop.borrow(), None);
    }
}

//! Watching the guardian's services: each runs in a [`JoinSet`] under its name, a panic is
//! caught and turned into a reason, and a service that ends before shutdown is a failure of
//! the whole guardian (STYLE: a daemon is never alive-but-dead).
//!
//! The services (dispatcher, heartbeat, listener, reaper) loop until shutdown; none returns
//! on its own. One that returns early or panics is a bug: the guardian logs which and why,
//! stops (see `shutdown`) and exits non-zero so that systemd restarts it. What a dead
//! dispatcher had claimed but not started stays `running` in the database until the next
//! start declares it lost (retried where the job allows).
//!
//! Debug builds only: the fault hook `SISY_TEST_FAULT=<service>:<panic|end>[:<file>]` makes
//! the named service (or, for `supervisor`, every run's supervisor task) panic or return,
//! once `<file>` exists when one is given. The integration tests use it, since no real
//! trigger makes a service die; release builds ignore the variable.

use std::any::Any;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::JoinSet;

/// How a service ended: its name, and Err(panic message) when it panicked.
pub(super) type Ended = (&'static str, Result<(), String>);

/// The running services.
pub(super) struct Services {
    set: JoinSet<Ended>,
    /// The services that have ended (so that waiting for one of them returns at once).
    ended: HashSet<&'static str>,
}

impl Services {
    pub fn new() -> Services {
        Services {
            set: JoinSet::new(),
            ended: HashSet::new(),
        }
    }

    /// Runs `service` under `name`, catching its panic.
    pub fn spawn(
        &mut self,
        name: &'static str,
        service: impl Future<Output = ()> + Send + 'static,
    ) {
        self.set.spawn(async move {
            let watched = async {
                tokio::select! {
                    () = service => {}
                    () = fault(name) => {}
                }
            };
            let ended = AssertUnwindSafe(watched).catch_unwind().await;
            (name, ended.map_err(|p| panic_message(p.as_ref())))
        });
    }

    /// The next service to end (pending forever when none runs).
    pub async fn next(&mut self) -> Ended {
        match self.set.join_next().await {
            Some(Ok(ended)) => {
                self.ended.insert(ended.0);
                ended
            }
            Some(Err(e)) => ("a service", Err(e.to_string())),
            None => std::future::pending().await,
        }
    }

    /// Waits for the service `name` to end, up to `limit`; the others that end meanwhile are
    /// expected (shutdown is under way). False when it did not end in time ([`finish`]
    /// aborts it).
    ///
    /// [`finish`]: Services::finish
    pub async fn wait_for(&mut self, name: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        if self.ended.contains(name) {
            return true;
        }
        loop {
            match tokio::time::timeout_at(deadline, self.set.join_next()).await {
                Ok(Some(Ok((ended, result)))) => {
                    self.ended.insert(ended);
                    if let Err(why) = &result {
                        tracing::error!(service = ended, reason = %why, "guardian service panicked during shutdown");
                    }
                    if ended == name {
                        return true;
                    }
                }
                Ok(Some(Err(_))) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Waits up to `limit` for every service to end, then aborts what is left.
    pub async fn finish(&mut self, limit: Duration) {
        if !self.wait_for("", limit).await {
            tracing::warn!("guardian services did not stop in time; aborted");
            self.set.abort_all();
        }
    }
}

/// Why a service's end is a failure, in words for the log and the runs' `error`.
pub(super) fn describe((name, result): &Ended) -> String {
    match result {
        Ok(()) => format!("its {name} service ended on its own (a bug: please report it)"),
        Err(why) => format!("its {name} service panicked ({why}; a bug: please report it)"),
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// The test fault hook for `name` (see the module doc): resolves when the service is to
/// end, panics when it is to panic, and never resolves otherwise.
pub(crate) async fn fault(name: &str) {
    let Some((mode, file)) = fault_for(name) else {
        return std::future::pending().await;
    };
    if let Some(file) = file {
        while !std::path::Path::new(&file).exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if mode == "panic" {
        panic!("test fault injected into the {name} service (SISY_TEST_FAULT)");
    }
    tracing::warn!(
        service = name,
        "test fault: the service ends (SISY_TEST_FAULT)"
    );
}

/// `SISY_TEST_FAULT`'s mode and file for `name`, in debug builds only.
fn fault_for(name: &str) -> Option<(String, Option<String>)> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let spec = std::env::var("SISY_TEST_FAULT").ok()?;
    let mut parts = spec.splitn(3, ':');
    if parts.next()? != name {
        return None;
    }
    let mode = parts.next().unwrap_or("panic").to_string();
    Some((mode, parts.next().map(str::to_string)))
}

/// Panics when the fault hook names `name` (for code that is not a service loop: a run's
/// supervisor task).
pub(crate) fn fault_point(name: &str) {
    if fault_for(name).is_some() {
        panic!("test fault injected into the {name} (SISY_TEST_FAULT)");
    }
}

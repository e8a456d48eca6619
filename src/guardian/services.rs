//! Watching the guardian's services: each runs in a [`JoinSet`] under its name, a panic is
//! caught and turned into a reason, and a service that ends before shutdown is a failure of
//! the whole guardian (STYLE: a daemon is never alive-but-dead).
//!
//! The services (dispatcher, heartbeat, listener unless `listen = false`, reaper) loop
//! until shutdown; none returns on its own. One that returns early or panics is a bug: the
//! guardian logs which and why, stops (see `shutdown`) and exits non-zero so that systemd
//! restarts it. What a dead dispatcher had claimed but not started stays `running` in the
//! database until the next start declares it lost (retried where the job allows).
//!
//! Each service is raced against its test fault hook (`service::fault`, debug builds only).

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::JoinSet;

use crate::service::fault::{fault, panic_message};

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

//! The guardian's view of whether the database is reachable.
//!
//! Every service (heartbeat, dispatcher, listener, recorder, start-up) retries on its own,
//! with backoff; this module only decides what the operator reads: one warning when the
//! database stops answering, one line when it is back with how long it was away, whatever
//! the number of services and retries in between. It also tells a connection problem
//! (worth waiting out) from an error no retry can fix (a refused password, a missing
//! schema, a server certificate this host does not trust), which start-up reports and
//! exits on. After start-up the services log such an error each time they meet it (the
//! heartbeat: once per interval) and keep retrying: running jobs are not killed because a
//! certificate was rotated badly, and the guardian works again once it is fixed.
//! Does not retry anything itself.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

/// A failure this soon after the database came back belongs to the same outage: pooled
/// connections opened before a restart fail once each when first used after it, and
/// that is no news for the operator.
const SETTLE: Duration = Duration::from_secs(10);

/// Whether the database is currently out of reach, as the services found it.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the current outage began; None while the database answers.
    since: Option<Instant>,
    /// Whether the current outage was announced (not a straggler after a recovery).
    announced: bool,
    /// When the last outage ended.
    recovered: Option<Instant>,
    /// An outage that ended within `SETTLE` of its start, not yet said to be over: (when it
    /// began, when it ended, whether it was announced). A server shutting down answers a
    /// session or two after ending the others; a failure within `SETTLE` of such an end
    /// resumes the same outage, and only an end that holds for `SETTLE` is announced.
    quiet: Option<(Instant, Instant, bool)>,
}

impl Outage {
    /// A service could not reach the database: logs the first failure of an outage only.
    pub fn failed(&self, service: &str, error: &anyhow::Error) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.since.is_none()
            && let Some((began, ended, announced)) = state.quiet.take()
        {
            if ended.elapsed() < SETTLE {
                // The end did not hold: the same outage goes on.
                state.since = Some(began);
                state.announced = announced;
                tracing::debug!(service, error = %format!("{error:#}"), "database still unreachable");
                return;
            }
            announce_end(announced, ended - began);
        }
        if let Some(since) = state.since {
            if !state.announced && since.elapsed() >= SETTLE {
                // Not a straggler after all: the database is away again.
                state.announced = true;
                tracing::warn!(service, error = %format!("{error:#}"), "database unreachable again; reconnecting with backoff");
            } else {
                tracing::debug!(service, error = %format!("{error:#}"), "database still unreachable");
            }
            return;
        }
        state.since = Some(Instant::now());
        state.announced = state.recovered.is_none_or(|at| at.elapsed() >= SETTLE);
        if state.announced {
            tracing::warn!(
                service, error = %format!("{error:#}"),
                "database unreachable: running jobs keep running and their results are kept \
                 (in memory and in the spool under state_dir) until it is back; reconnecting \
                 with backoff"
            );
        } else {
            tracing::debug!(service, error = %format!("{error:#}"), "a connection from before the outage failed");
        }
    }

    /// A statement sent at `sent` went through: ends the outage, if there was one and the
    /// statement was sent after it began. An answer to a statement sent before the first
    /// failure proves nothing (a server shutting down answers some of its sessions and ends
    /// the others), so it neither ends the outage nor starts a new one later.
    pub fn ok(&self, sent: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.since.is_some_and(|at| sent < at) {
            return;
        }
        let now = Instant::now();
        if let Some(began) = state.since.take() {
            state.recovered = Some(now);
            if now - began < SETTLE {
                // Too soon to tell: said once it holds (or resumed by the next failure).
                state.quiet = Some((began, now, state.announced));
            } else {
                announce_end(state.announced, now - began);
            }
        } else if let Some((began, ended, announced)) = state.quiet
            && ended.elapsed() >= SETTLE
        {
            state.quiet = None;
            announce_end(announced, ended - began);
        }
    }
}

/// The line that says an announced outage is over, and how long it lasted.
fn announce_end(announced: bool, lasted: Duration) {
    if announced {
        tracing::info!(
            after_s = lasted.as_secs_f64().round(),
            "database reachable again"
        );
    }
}

/// Whether `error` means "the database is not reachable right now" (down, restarting,
/// failing over, a broken connection, a pool timeout), as opposed to an error that waiting
/// cannot fix.
pub fn is_connection_error(error: &anyhow::Error) -> bool {
    // A refused certificate is in an io::Error too, but it will not fix itself.
    if crate::db::is_tls_failure(error) {
        return false;
    }
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<tokio_postgres::Error>() {
            return postgres_error_is_connection(e);
        }
        if let Some(e) = cause.downcast_ref::<deadpool_postgres::PoolError>() {
            return match e {
                deadpool_postgres::PoolError::Backend(e) => postgres_error_is_connection(e),
                _ => true,
            };
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
    }
    false
}

fn postgres_error_is_connection(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        // No answer from a server: refused, reset, closed, timed out, not read-write.
        return true;
    };
    let code = db.code();
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            // A connection that still points at a server demoted to standby.
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ]
        .contains(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_connection_errors_and_others_are_not() {
        let io = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
            .context("cannot connect");
        assert!(is_connection_error(&io));
        assert!(!is_connection_error(&anyhow::anyhow!("schema is too old")));
    }

    #[test]
    fn an_outage_is_reported_once_and_ends() {
        let outage = Outage::default();
        assert!(outage.state.lock().unwrap().since.is_none());
        outage.failed("test", &anyhow::anyhow!("down"));
        outage.failed("test", &anyhow::anyhow!("still down"));
        assert!(outage.state.lock().unwrap().since.is_some());
        outage.ok(Instant::now());
        assert!(outage.state.lock().unwrap().since.is_none());
        // A failure right after that end is the same outage going on: no second warning.
        outage.failed("test", &anyhow::anyhow!("stale"));
        {
            let state = outage.state.lock().unwrap();
            assert!(state.since.is_some() && state.announced && state.quiet.is_none());
        }
        outage.ok(Instant::now());
    }

    #[test]
    fn a_short_outage_is_said_to_be_over_once_the_end_holds() {
        let outage = Outage::default();
        outage.failed("test", &anyhow::anyhow!("down"));
        outage.ok(Instant::now());
        assert!(
            outage.state.lock().unwrap().quiet.is_some(),
            "too soon to say"
        );
        // As if SETTLE had passed since the end: the next success says it is over.
        {
            let mut state = outage.state.lock().unwrap();
            let (began, ended, announced) = state.quiet.unwrap();
            let earlier = |t: Instant| t.checked_sub(SETTLE).unwrap();
            state.quiet = Some((earlier(began), earlier(ended), announced));
        }
        outage.ok(Instant::now());
        assert!(outage.state.lock().unwrap().quiet.is_none());
    }

    #[test]
    fn an_answer_to_a_statement_sent_before_the_outage_does_not_end_it() {
        let outage = Outage::default();
        let sent_before = Instant::now();
        outage.failed(
            "listener",
            &anyhow::anyhow!("terminated by the server's shutdown"),
        );
        outage.ok(sent_before);
        let state = outage.state.lock().unwrap();
        assert!(state.since.is_some(), "a stale answer ended the outage");
        assert!(state.announced && state.recovered.is_none());
    }
}

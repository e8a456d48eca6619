//! The guardian's view of whether the database is reachable.
//!
//! Every service (heartbeat, dispatcher, listener, recorder, start-up) retries on its own,
//! with backoff; this module only decides what the operator reads: one warning when the
//! database stops answering, one line when it is back with how long it was away, whatever
//! the number of services and retries in between. It also tells a connection problem
//! (worth waiting out) from an error no retry can fix (a refused password, a missing
//! schema), which start-up reports and exits on.
//! Does not retry anything itself.

use std::sync::Mutex;
use std::time::Instant;

use tokio_postgres::error::SqlState;

/// Whether the database is currently out of reach, as the services found it.
#[derive(Debug, Default)]
pub struct Outage {
    since: Mutex<Option<Instant>>,
}

impl Outage {
    /// A service could not reach the database: logs the first failure of an outage only.
    pub fn failed(&self, service: &str, error: &anyhow::Error) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_none() {
            *since = Some(Instant::now());
            tracing::warn!(
                service, error = %format!("{error:#}"),
                "database unreachable: running jobs keep running and their results are kept \
                 (in memory and in the spool under state_dir) until it is back; reconnecting \
                 with backoff"
            );
        } else {
            tracing::debug!(service, error = %format!("{error:#}"), "database still unreachable");
        }
    }

    /// A statement went through: ends the outage, if there was one.
    pub fn ok(&self) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = since.take() {
            tracing::info!(
                after_s = at.elapsed().as_secs_f64().round(),
                "database reachable again"
            );
        }
    }

    pub fn is_down(&self) -> bool {
        self.since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// Whether `error` means "the database is not reachable right now" (down, restarting,
/// failing over, a broken connection, a pool timeout), as opposed to an error that waiting
/// cannot fix.
pub fn is_connection_error(error: &anyhow::Error) -> bool {
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
        assert!(!outage.is_down());
        outage.failed("test", &anyhow::anyhow!("down"));
        outage.failed("test", &anyhow::anyhow!("still down"));
        assert!(outage.is_down());
        outage.ok();
        assert!(!outage.is_down());
    }
}

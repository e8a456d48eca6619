//! Bounded use of pooled connections: a database that black-holes (packets dropped, no
//! reset, hence no error, only silence) must not hang a service for good, and a connection
//! abandoned in the middle of a statement must never serve again.
//!
//! tokio-postgres has no statement timeout of its own, TCP keepalives and
//! `tcp_user_timeout` take minutes and a Unix socket has neither: the bound that works
//! everywhere is the application's own, [`within`]. When it fires, the future that was
//! using the connection is dropped mid-statement. A plain pooled object would then go back
//! to the pool (it is not *closed*, only silent) and hang its next user too; so a [`Conn`]
//! goes back to the pool only through [`Conn::release`], called once the work on it is done,
//! and dropped any other way (the bound fired, an error returned early, the task ended) it
//! is detached from the pool and closed. A timeout also closes the pool's idle connections:
//! opened before the silence, they are most likely as silent as the one that timed out, and
//! trying them one by one would cost a bound each.
//! Does not choose the bounds: each service knows how long its work may take.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use anyhow::Result;
use deadpool_postgres::{Object, Pool};

/// A pooled connection that returns to its pool only when released (see the module doc).
pub struct Conn(Option<Object>);

/// Takes a connection from `pool`; bound the call with [`within`] (opening a connection to a
/// silent server waits as long as any statement).
pub async fn checkout(pool: &Pool) -> Result<Conn> {
    Ok(Conn(Some(pool.get().await?)))
}

impl Conn {
    /// The work is done and every answer was read: the connection may serve again.
    pub fn release(mut self) {
        drop(self.0.take());
    }
}

impl Deref for Conn {
    type Target = deadpool_postgres::ClientWrapper;
    fn deref(&self) -> &Self::Target {
        self.0
            .as_ref()
            .expect("a connection is only taken out when released")
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
            .as_mut()
            .expect("a connection is only taken out when released")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            // Detached from the pool and dropped: the client closes and its connection task
            // is aborted, so the socket is closed too.
            drop(Object::take(object));
        }
    }
}

/// How long a service waits for the database to answer one step of its work (a tick, a
/// claim, admission, a batch of the scheduler) before it gives up on the connection: a
/// lease, and never less than 10 s, so that a busy database is not mistaken for a silent one.
pub(crate) fn answer_limit(lease: Duration) -> Duration {
    lease.max(Duration::from_secs(10))
}

/// Runs `work` (which uses connections of `pool`) for at most `limit` of the time this
/// process ran: a jump of the monotonic clock between two of its steps (a pause: SIGSTOP, a
/// frozen VM) counts as one step, so a guardian paused in the middle of a statement gets its
/// answer instead of a timeout that would report an outage. Past the limit, the work is
/// dropped, with the connection it held (see [`Conn`]), the pool's idle connections are
/// closed, and the error is an I/O timeout, which `outage` counts as the database being out
/// of reach.
pub async fn within<T>(
    pool: &Pool,
    limit: Duration,
    what: &str,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let step = (limit / 8).max(Duration::from_millis(20));
    {
        // In a block of its own: the work, and the connection it holds, are dropped at its
        // end, before the idle connections are closed.
        let mut work = std::pin::pin!(work);
        let mut ran = Duration::ZERO;
        let mut last = Instant::now();
        while ran < limit {
            tokio::select! {
                // An answer that arrived during a pause wins over the timer.
                biased;
                result = &mut work => return result,
                _ = tokio::time::sleep(step) => {}
            }
            let now = Instant::now();
            let gap = now - last;
            last = now;
            ran += if gap > step + PAUSE_SLACK { step } else { gap };
        }
    }
    pool.retain(|_, _| false);
    Err(timed_out(what, limit))
}

/// A timer that fires later than this past its step was not running: the process was paused
/// (SIGSTOP, a frozen VM). Room for a loaded machine to run the task late.
const PAUSE_SLACK: Duration = Duration::from_millis(500);

/// The error of a wait for the database that gave up after `limit`: an I/O timeout, which
/// `outage` counts as the database being out of reach.
pub(crate) fn timed_out(what: &str, limit: Duration) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the database did not answer {what} within {}: the connection was closed; \
             retrying on a new one",
            humantime::format_duration(limit)
        ),
    ))
}

//! The reaper: housekeeping of history.
//!
//! Owns deleting finished runs (and ended flow runs) older than `history_retention`, in batches of
//! [`BATCH`] rows (each its own short statement, so no long lock and no huge transaction),
//! and forgetting hosts dead for longer than the retention. The guardian that tends (holds
//! the `tend` lease, or sees nobody hold it: `Leads`) runs it every [`INTERVAL`]; the others
//! skip their pass. SKIP LOCKED keeps several from contending during a hand-over. Does not touch pending or
//! running runs, but for one case: a running run whose host has no row at all (written by
//! hand), which no heartbeat's rescue would ever find, is declared lost. Each statement is bounded ([`STATEMENT_LIMIT`]): a silent database must not
//! hold the reaper, or the shutdown that waits for it, for good.
//!
//! Its shape is every service's: the `Reaper` holds its handles, `Reaper::run` is the
//! loop (its timer and shutdown; nothing wakes it early, so it has no wake-up), and
//! `Reaper::run_once` the work, whose errors are logged and tried again at the next
//! interval. It reads `history_retention` from the [`LiveConfig`] at every pass rather than
//! from a config of its own, so that a reload changes the retention without a restart; its
//! interval and limits are constants, not settings. Tests call [`prune`] with a retention of
//! their own.

use std::time::Duration;

use anyhow::Result;
use deadpool_postgres::Pool;

use tokio_util::sync::CancellationToken;

use crate::db::{self, q};
use crate::service::{Leads, LiveConfig};

pub const BATCH: i64 = 1000;
pub(crate) const INTERVAL: Duration = Duration::from_secs(600);
/// The longest one batch may take: deleting a thousand rows takes milliseconds; a minute
/// means the database is not answering.
const STATEMENT_LIMIT: Duration = Duration::from_secs(60);

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub runs: u64,
    pub flow_runs: u64,
    pub hosts: u64,
    /// Running runs whose host has no row, declared lost (`runs_lost_without_host.sql`).
    pub hostless: u64,
}

/// What the reaper needs: the pool it deletes through, the configuration it takes the
/// retention from.
pub(crate) struct Reaper {
    pub db: Pool,
    pub config: LiveConfig,
    /// Whether this guardian tends: only the `tend` lease's holder prunes (see `Leads`).
    pub leads: Leads,
}

impl Reaper {
    /// The reaper's loop, until `stopping` fires.
    pub(crate) async fn run(self, stopping: CancellationToken) {
        // The first pass a minute after start: not in the way of start-up, soon enough to matter.
        let mut next = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stopping.cancelled() => return,
            }
            // One guardian of the fleet, not each of them: a thousand guardians started
            // together pruned together, a minute after their start.
            let pass = if self.leads.tending() {
                self.run_once().await
            } else {
                Ok(Outcome::default())
            };
            match pass {
                Ok(o) if o.hostless > 0 => {
                    tracing::warn!(
                        runs = o.hostless,
                        "running runs of hosts without a row in sisy.hosts declared lost"
                    )
                }
                Ok(o) if o.runs > 0 || o.flow_runs > 0 || o.hosts > 0 => {
                    tracing::info!(
                        runs = o.runs,
                        flow_runs = o.flow_runs,
                        hosts = o.hosts,
                        "old history deleted"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "history pruning failed; trying again later")
                }
            }
            next = tokio::time::Instant::now() + INTERVAL;
        }
    }

    /// One pass: prunes with the retention configured now.
    pub(crate) async fn run_once(&self) -> Result<Outcome> {
        prune(&self.db, self.config.get().history_retention).await
    }
}

/// Deletes everything older than `retention`, batch by batch.
pub async fn prune(db: &Pool, retention: Duration) -> Result<Outcome> {
    let secs = retention.as_secs_f64();
    let client = db::within(db, STATEMENT_LIMIT, "a connection", db::checkout(db)).await?;
    let mut outcome = Outcome::default();
    loop {
        let batch = async { Ok(db::execute(&client, q::RUNS_PRUNE, &[&secs, &BATCH]).await?) };
        let n = db::within(db, STATEMENT_LIMIT, "history pruning", batch).await?;
        outcome.runs += n;
        if n < BATCH as u64 {
            break;
        }
        // Let other work in between batches.
        tokio::task::yield_now().await;
    }
    loop {
        let batch = async { Ok(db::execute(&client, q::FLOW_RUNS_PRUNE, &[&secs, &BATCH]).await?) };
        let n = db::within(db, STATEMENT_LIMIT, "flow run pruning", batch).await?;
        outcome.flow_runs += n;
        if n < BATCH as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let hosts = async { Ok(db::execute(&client, q::HOSTS_PRUNE, &[&secs]).await?) };
    outcome.hosts = db::within(db, STATEMENT_LIMIT, "host pruning", hosts).await?;
    let hostless = async { Ok(db::execute(&client, q::RUNS_LOST_WITHOUT_HOST, &[]).await?) };
    outcome.hostless = db::within(db, STATEMENT_LIMIT, "runs without a host", hostless).await?;
    client.release();
    Ok(outcome)
}

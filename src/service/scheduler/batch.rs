//! The scheduler's batch: the runs one pass inserts, gathered as the columns of one
//! `unnest` INSERT.
//!
//! Owns turning a job's [`Plan`] into rows (a `pending` run per occurrence, per live host of
//! the pool for `all` jobs; one `expired` row counting the missed occurrences), recording the
//! occurrences of `all` jobs no host could take (extending the job's latest such record, or a
//! new one), the sentences of those records, and the INSERT itself. Does not decide which
//! occurrences run (`plan`) nor read the jobs (the parent module).

use anyhow::Result;
use chrono::{DateTime, Utc};

use super::DueJob;
use super::plan::{Missed, Occurrence, Plan, later};
use crate::db::{self, q};

/// The rows one pass inserts, as the columns of one `unnest` INSERT.
#[derive(Default)]
pub(super) struct RunBatch {
    job_id: Vec<i64>,
    job_name: Vec<String>,
    pool: Vec<String>,
    scheduled_for: Vec<DateTime<Utc>>,
    target_host: Vec<Option<String>>,
    due_at: Vec<DateTime<Utc>>,
    deadline: Vec<DateTime<Utc>>,
    state: Vec<&'static str>,
    error: Vec<Option<String>>,
    missed_count: Vec<i64>,
    /// Occurrences of `all` jobs that no host could take, per job.
    hostless: Vec<Hostless>,
}

/// The occurrences of one `all` job's pass that found no live, undrained host of its pool.
struct Hostless {
    job: DueJob,
    first: Occurrence,
    last: DateTime<Utc>,
    count: i64,
}

impl RunBatch {
    pub(super) fn add(&mut self, job: &DueJob, plan: &Plan, hosts: &[(String, Vec<String>)]) {
        if let Some(m) = &plan.missed {
            let error = missed_message(job, m);
            tracing::warn!(job = %job.name, missed = m.count, "occurrences missed");
            let deadline = later(m.first, job.ttl);
            self.push(
                job,
                m.first,
                None,
                m.first,
                deadline,
                "expired",
                Some(error),
                m.count as i64,
            );
        }
        let targets: Vec<&String> = hosts
            .iter()
            .filter(|(_, p)| p.contains(&job.pool))
            .map(|(h, _)| h)
            .collect();
        if job.target_all && targets.is_empty() {
            if let (Some(first), Some(last)) = (plan.runs.first(), plan.runs.last()) {
                tracing::warn!(job = %job.name, pool = %job.pool, "no live, undrained host for an occurrence");
                self.hostless.push(Hostless {
                    job: job.clone(),
                    first: first.clone(),
                    last: last.scheduled_for,
                    count: plan.runs.len() as i64,
                });
            }
            return;
        }
        for occ in &plan.runs {
            if job.target_all {
                for host in &targets {
                    self.push(
                        job,
                        occ.scheduled_for,
                        Some((*host).clone()),
                        occ.due_at,
                        occ.deadline,
                        "pending",
                        None,
                        1,
                    );
                }
            } else {
                self.push(
                    job,
                    occ.scheduled_for,
                    None,
                    occ.due_at,
                    occ.deadline,
                    "pending",
                    None,
                    1,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        job: &DueJob,
        scheduled_for: DateTime<Utc>,
        target_host: Option<String>,
        due_at: DateTime<Utc>,
        deadline: DateTime<Utc>,
        state: &'static str,
        error: Option<String>,
        missed_count: i64,
    ) {
        self.job_id.push(job.id);
        self.job_name.push(job.name.clone());
        self.pool.push(job.pool.clone());
        self.scheduled_for.push(scheduled_for);
        self.target_host.push(target_host);
        self.due_at.push(due_at);
        self.deadline.push(deadline);
        self.state.push(state);
        self.error.push(error);
        self.missed_count.push(missed_count);
    }

    /// Records occurrences no host could take: the job's latest run is extended when it is
    /// already such a record (a stretch of hostless occurrences is one row), else a new
    /// `expired` row stands for them. Missed, not silently dropped (README: "Runs").
    async fn record_hostless(&mut self, tx: &deadpool_postgres::Transaction<'_>) -> Result<()> {
        if self.hostless.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = self.hostless.iter().map(|h| h.job.id).collect();
        let counts: Vec<i64> = self.hostless.iter().map(|h| h.count).collect();
        let lasts: Vec<DateTime<Utc>> = self.hostless.iter().map(|h| h.last).collect();
        let extended: std::collections::HashSet<i64> =
            db::query(tx, q::RUNS_EXTEND_HOSTLESS, &[&ids, &counts, &lasts])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
        for h in std::mem::take(&mut self.hostless) {
            if extended.contains(&h.job.id) {
                continue;
            }
            let error = hostless_message(&h);
            self.push(
                &h.job,
                h.first.scheduled_for,
                None,
                h.first.due_at,
                h.first.deadline,
                "expired",
                Some(error),
                h.count,
            );
        }
        Ok(())
    }

    /// Inserts the batch, the records of hostless occurrences included, in `tx`.
    pub(super) async fn insert(
        &mut self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<usize> {
        self.record_hostless(tx).await?;
        if self.job_id.is_empty() {
            return Ok(0);
        }
        let n = db::execute(
            tx,
            q::RUNS_INSERT,
            &[
                &self.job_id,
                &self.job_name,
                &self.pool,
                &self.scheduled_for,
                &self.target_host,
                &self.due_at,
                &self.deadline,
                &self.state,
                &self.error,
                &self.missed_count,
            ],
        )
        .await?;
        Ok(n as usize)
    }
}

/// Starts as runs_extend_hostless.sql matches and words its extensions.
fn hostless_message(h: &Hostless) -> String {
    let pool = &h.job.pool;
    if h.count == 1 {
        format!(
            "no live, undrained host of pool '{pool}' when due: missed the occurrence of {}",
            h.first.scheduled_for
        )
    } else {
        format!(
            "no live, undrained host of pool '{pool}' when due: missed {} occurrences from {} to {}",
            h.count, h.first.scheduled_for, h.last
        )
    }
}

fn missed_message(job: &DueJob, m: &Missed) -> String {
    let ttl = humantime::format_duration(job.ttl.to_std().unwrap_or_default());
    let count = if m.capped {
        format!("more than {}", m.count)
    } else {
        m.count.to_string()
    };
    if m.count == 1 && !m.capped {
        format!(
            "missed the occurrence of {}: no guardian of pool '{}' started it within its ttl ({ttl})",
            m.first, job.pool
        )
    } else {
        format!(
            "missed {count} occurrences from {} to {}: no guardian of pool '{}' started them within their ttl ({ttl})",
            m.first, m.last, job.pool
        )
    }
}

//! The scheduler: turns due occurrences of jobs into rows of `sisy.runs`.
//!
//! Owns computing `next_due` for jobs that lack one (new, rescheduled, resumed) and flagging
//! unusable schedules in `schedule_error`; and materialising the occurrences of due jobs of
//! this guardian's pools: a `pending` run per occurrence (per live host for `target = 'all'`),
//! and, for occurrences already past their deadline (say the whole fleet was down for a
//! week), one coalesced `expired` row that counts them. Its cost follows what is due: it
//! reads jobs through the index `jobs_pool_next_due`, pool by pool, never the whole table.
//! Does not own claiming or running (claimer, supervisor) nor expiring pending runs that no
//! guardian started in time (the dispatcher tick does that).
//!
//! ```text
//!   next_due ─┬─ occ ≤ now − ttl − jitter ─▶ counted into one `expired` row
//!             ├─ occ ≤ now, deadline ahead ─▶ `pending` run(s), due_at = occ + jitter
//!             └─ occ > now ─────────────────▶ the new next_due
//! ```
//! Next occurrences are always computed from the previous scheduled instant, never from
//! "now", so a slow tick neither skips nor repeats an occurrence. Statements run through
//! `db::query` (prepared once per connection, or unnamed through a transaction pooler).
//!
//! Not a service of its own: the dispatcher calls [`Scheduler::run_once`] when its tick says
//! a job is due, and bounds it. It has no config either: the dispatcher hands it the pools
//! of the running configuration ([`Scheduler::set_pools`] after a reload).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use deadpool_postgres::Pool;

use crate::db::{self, q};
use crate::schedule::Schedule;

mod batch;
mod plan;
use batch::RunBatch;
use plan::plan;

/// How many jobs one statement handles.
const BATCH: i64 = 200;
/// How long one pass keeps taking full batches before it hands back to the dispatcher
/// (which then runs another pass at once). Claims wait for the pass: a thousand jobs due at
/// the same instant are all materialised before the first of them is claimed and spawned,
/// instead of each batch waiting behind the spawning of the previous one.
const PASS_BUDGET: Duration = Duration::from_millis(200);
/// At most this many pending runs per job per pass (a per-second job after a long ttl).
const MAX_RUNS_PER_JOB: usize = 1000;
/// Missed occurrences are counted one by one up to this many, then skipped over.
const MISSED_COUNT_CAP: u64 = 100_000;

/// Whether a pass first seeds the jobs no guardian has computed `next_due` for (the tick
/// says when there are any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    Unseen,
    Skip,
}

pub struct Scheduler {
    db: Pool,
    pools: Vec<String>,
    schedules: Mutex<HashMap<(String, String), Result<Schedule, String>>>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Jobs given a first `next_due` or a `schedule_error`.
    pub seeded: usize,
    /// Due jobs handled.
    pub jobs: usize,
    /// Rows inserted into `sisy.runs` (pending and expired).
    pub runs: usize,
    /// Whether a batch was full (there may be more to do at once).
    pub more: bool,
}

impl Scheduler {
    pub fn new(db: Pool, pools: Vec<String>) -> Scheduler {
        Scheduler {
            db,
            pools,
            schedules: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_pools(&mut self, pools: Vec<String>) {
        self.pools = pools;
    }

    /// Seeds unseen jobs, then materialises due ones, batch after batch while batches come
    /// back full, for up to [`PASS_BUDGET`].
    /// `acting`: the pools whose every job it materialises; of its other pools, only the
    /// `all` jobs (see `jobs_due.sql`).
    pub async fn run_once(&self, seed: Seed, acting: &[String]) -> Result<Outcome> {
        let began = Instant::now();
        let mut outcome = Outcome::default();
        let full = |n: usize| n as i64 == BATCH;
        if seed == Seed::Unseen {
            loop {
                let n = self.seed().await?;
                outcome.seeded += n;
                outcome.more = full(n);
                if !outcome.more || began.elapsed() >= PASS_BUDGET {
                    break;
                }
            }
        }
        // Materialise even when seeding used up the budget: due occurrences come first.
        loop {
            let (jobs, runs) = self.materialise(acting).await?;
            outcome.jobs += jobs;
            outcome.runs += runs;
            if !full(jobs) || began.elapsed() >= PASS_BUDGET {
                outcome.more |= full(jobs);
                break;
            }
        }
        Ok(outcome)
    }

    /// Gives jobs without a `next_due` their first one (after the database's now), or flags them.
    async fn seed(&self) -> Result<usize> {
        let mut client = db::checkout(&self.db).await?;
        let tx = db::begin(&mut client).await?;
        let rows = db::query(&tx, q::JOBS_UNSEEN, &[&BATCH]).await?;
        let (mut ids, mut next, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            let (id, expr, tz, now): (i64, String, String, DateTime<Utc>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            ids.push(id);
            match self.schedule(&expr, &tz) {
                Ok(s) => match s.next_after(now) {
                    Some(at) => {
                        next.push(Some(at));
                        errors.push(None);
                    }
                    None => {
                        next.push(None);
                        errors.push(Some(format!("schedule '{expr}' never fires after {now}")));
                    }
                },
                Err(e) => {
                    next.push(None);
                    errors.push(Some(e));
                }
            }
        }
        for (id, error) in ids.iter().zip(&errors) {
            if let Some(error) = error {
                tracing::warn!(job_id = id, %error, "job has an unusable schedule");
            }
        }
        if !ids.is_empty() {
            db::execute(&tx, q::JOBS_SEED, &[&ids, &next, &errors]).await?;
        }
        tx.commit().await?;
        client.release();
        Ok(ids.len())
    }

    /// Materialises the occurrences of due jobs of this guardian's pools.
    async fn materialise(&self, acting: &[String]) -> Result<(usize, usize)> {
        let mut client = db::checkout(&self.db).await?;
        let tx = db::begin(&mut client).await?;
        let rows = db::query(&tx, q::JOBS_DUE, &[&self.pools, &BATCH, &acting]).await?;
        if rows.is_empty() {
            tx.commit().await?;
            client.release();
            return Ok((0, 0));
        }
        // A row whose values the guardian cannot use is flagged alone, never the batch.
        let (mut jobs, mut ids, mut next, mut errors) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            match DueJob::from_row(row) {
                Ok(job) => jobs.push(job),
                Err((id, error)) => {
                    tracing::warn!(job_id = id, %error, "job has an unusable row");
                    ids.push(id);
                    next.push(None);
                    errors.push(Some(error));
                }
            }
        }
        let hosts = if jobs.iter().any(|j| j.target_all) {
            let rows = db::query(&tx, q::HOSTS_LIVE, &[]).await?;
            rows.iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<String>>(1)))
                .collect()
        } else {
            Vec::new()
        };
        let mut batch = RunBatch::default();
        for job in &jobs {
            ids.push(job.id);
            // No schedule: a one-off at next_due, after which next_due is NULL.
            let schedule = match &job.schedule {
                None => None,
                Some(expr) => match self.schedule(expr, &job.timezone) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        next.push(None);
                        errors.push(Some(e));
                        continue;
                    }
                },
            };
            let plan = plan(job, schedule.as_ref(), &mut rand::rng());
            batch.add(job, &plan, &hosts);
            errors.push(match (&job.schedule, plan.next_due) {
                (Some(expr), None) => Some(format!(
                    "schedule '{expr}' never fires after {}",
                    job.next_due
                )),
                _ => None,
            });
            next.push(plan.next_due);
        }
        let inserted = batch.insert(&tx).await?;
        db::execute(&tx, q::JOBS_SET_NEXT_DUE, &[&ids, &next, &errors]).await?;
        tx.commit().await?;
        client.release();
        Ok((rows.len(), inserted))
    }

    /// A parsed schedule, cached by (expression, zone); the error is the sentence to record.
    fn schedule(&self, expr: &str, tz: &str) -> Result<Schedule, String> {
        let mut cache = self.schedules.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 50_000 {
            cache.clear(); // bounded: a fleet with this many distinct schedules re-parses
        }
        cache
            .entry((expr.to_string(), tz.to_string()))
            .or_insert_with(|| Schedule::parse(expr, tz).map_err(|e| e.to_string()))
            .clone()
    }
}

/// A due job as the scheduler reads it.
#[derive(Debug, Clone)]
pub struct DueJob {
    pub id: i64,
    pub name: String,
    pub pool: String,
    pub target_all: bool,
    /// None: a one-off run at `next_due`.
    pub schedule: Option<String>,
    pub timezone: String,
    pub ttl: ChronoDuration,
    pub jitter: ChronoDuration,
    pub next_due: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

impl DueJob {
    /// Reads a due job, or gives its id and the sentence to flag it with when a value cannot
    /// be used (a `next_due` of '-infinity' or beyond the years chrono represents).
    fn from_row(row: &tokio_postgres::Row) -> Result<DueJob, (i64, String)> {
        let id: i64 = row.get("id");
        // Clamped at db::MAX_INTERVAL: every sum below stays a representable time.
        let interval = |name: &str| {
            let secs = row.try_get::<_, Option<f64>>(name).ok().flatten();
            ChronoDuration::from_std(db::secs(secs)).unwrap_or(ChronoDuration::zero())
        };
        let next_due = row.try_get("next_due").map_err(|_| {
            let text: Option<String> = row.try_get("next_due_text").ok().flatten();
            (
                id,
                format!(
                    "next_due '{}' is not a time the guardian can schedule: set next_due to a time between the years 1 and 9999 (or to NULL, with schedule_error NULL, to have it computed again)",
                    text.unwrap_or_default()
                ),
            )
        })?;
        let text = |name: &str| row.try_get::<_, Option<String>>(name).ok().flatten();
        Ok(DueJob {
            id,
            name: text("name").unwrap_or_default(),
            pool: text("pool").unwrap_or_default(),
            target_all: text("target").as_deref() == Some("all"),
            schedule: text("schedule"),
            timezone: text("timezone").unwrap_or_default(),
            ttl: interval("ttl"),
            jitter: interval("jitter"),
            next_due,
            now: row.get("db_now"),
        })
    }
}

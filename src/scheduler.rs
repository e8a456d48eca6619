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
//! "now", so a slow tick neither skips nor repeats an occurrence. Statements are prepared
//! once per connection (`prepare_cached`): parsed and planned once, one round trip each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use deadpool_postgres::Pool;
use rand::RngExt;

use crate::db::{self, q};
use crate::schedule::Schedule;

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
    pub async fn run_once(&self, seed: bool) -> Result<Outcome> {
        let began = Instant::now();
        let mut outcome = Outcome::default();
        let full = |n: usize| n as i64 == BATCH;
        if seed {
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
            let (jobs, runs) = self.materialise().await?;
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
        let tx = client.transaction().await?;
        let rows = tx
            .query(&tx.prepare_cached(q::JOBS_UNSEEN).await?, &[&BATCH])
            .await?;
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
            let set_next_due = tx.prepare_cached(q::JOBS_SET_NEXT_DUE).await?;
            tx.execute(&set_next_due, &[&ids, &next, &errors]).await?;
        }
        tx.commit().await?;
        client.release();
        Ok(ids.len())
    }

    /// Materialises the occurrences of due jobs of this guardian's pools.
    async fn materialise(&self) -> Result<(usize, usize)> {
        let mut client = db::checkout(&self.db).await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                &tx.prepare_cached(q::JOBS_DUE).await?,
                &[&self.pools, &BATCH],
            )
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            client.release();
            return Ok((0, 0));
        }
        let jobs: Vec<DueJob> = rows.iter().map(DueJob::from_row).collect();
        let hosts = if jobs.iter().any(|j| j.target_all) {
            let rows = tx
                .query(&tx.prepare_cached(q::HOSTS_LIVE).await?, &[])
                .await?;
            rows.iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<String>>(1)))
                .collect()
        } else {
            Vec::new()
        };
        let mut batch = RunBatch::default();
        let (mut ids, mut next, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for job in &jobs {
            ids.push(job.id);
            match self.schedule(&job.schedule, &job.timezone) {
                Ok(schedule) => {
                    let plan = plan(job, &schedule, &mut rand::rng());
                    batch.add(job, &plan, &hosts);
                    errors.push(match plan.next_due {
                        None => Some(format!(
                            "schedule '{}' never fires after {}",
                            job.schedule, job.next_due
                        )),
                        Some(_) => None,
                    });
                    next.push(plan.next_due);
                }
                Err(e) => {
                    next.push(None);
                    errors.push(Some(e));
                }
            }
        }
        let inserted = batch.insert(&tx).await?;
        let set_next_due = tx.prepare_cached(q::JOBS_SET_NEXT_DUE).await?;
        tx.execute(&set_next_due, &[&ids, &next, &errors]).await?;
        tx.commit().await?;
        client.release();
        Ok((jobs.len(), inserted))
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
    pub schedule: String,
    pub timezone: String,
    pub ttl: ChronoDuration,
    pub jitter: ChronoDuration,
    pub next_due: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

impl DueJob {
    fn from_row(row: &tokio_postgres::Row) -> DueJob {
        let chrono =
            |v: Option<f64>| ChronoDuration::from_std(db::secs(v)).unwrap_or(ChronoDuration::MAX);
        DueJob {
            id: row.get("id"),
            name: row.get("name"),
            pool: row.get("pool"),
            target_all: row.get::<_, String>("target") == "all",
            schedule: row.get("schedule"),
            timezone: row.get("timezone"),
            ttl: chrono(row.get("ttl")),
            jitter: chrono(row.get("jitter")),
            next_due: row.get("next_due"),
            now: row.get("db_now"),
        }
    }
}

/// One occurrence to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub scheduled_for: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
}

/// Occurrences that can no longer start, coalesced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub count: u64,
    /// Counting stopped at MISSED_COUNT_CAP: `count` is a lower bound.
    pub capped: bool,
}

/// What to do for one due job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub runs: Vec<Occurrence>,
    pub missed: Option<Missed>,
    /// The first occurrence not handled; None when the schedule never fires again.
    pub next_due: Option<DateTime<Utc>>,
}

/// Decides, for the occurrences from `job.next_due` up to `job.now`, which still run and
/// which are missed. Pure: the tests drive it directly.
pub fn plan(job: &DueJob, schedule: &Schedule, rng: &mut impl rand::Rng) -> Plan {
    let now = job.now;
    // Before this instant an occurrence is past its deadline whatever its jitter.
    let horizon = now - job.ttl - job.jitter;
    let mut runs = Vec::new();
    let mut missed: Option<Missed> = None;
    let mut occ = Some(job.next_due);
    while let Some(at) = occ {
        if at > now || runs.len() >= MAX_RUNS_PER_JOB {
            break;
        }
        let due_at = at + random_below(job.jitter, rng);
        let deadline = due_at + job.ttl;
        if at >= horizon && deadline > now {
            runs.push(Occurrence {
                scheduled_for: at,
                due_at,
                deadline,
            });
            occ = schedule.next_after(at);
            continue;
        }
        let m = missed.get_or_insert(Missed {
            first: at,
            last: at,
            count: 0,
            capped: false,
        });
        m.last = at;
        m.count += 1;
        occ = if m.count >= MISSED_COUNT_CAP && at < horizon {
            // Enough counted: jump to the first occurrence that may still be on time.
            m.capped = true;
            schedule.next_after(horizon.max(at) - ChronoDuration::nanoseconds(1))
        } else {
            schedule.next_after(at)
        };
    }
    Plan {
        runs,
        missed,
        next_due: occ,
    }
}

fn random_below(limit: ChronoDuration, rng: &mut impl rand::Rng) -> ChronoDuration {
    let micros = limit.num_microseconds().unwrap_or(i64::MAX);
    if micros <= 0 {
        return ChronoDuration::zero();
    }
    ChronoDuration::microseconds(rng.random_range(0..micros))
}

/// The rows one pass inserts, as the columns of one `unnest` INSERT.
#[derive(Default)]
struct RunBatch {
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
}

impl RunBatch {
    fn add(&mut self, job: &DueJob, plan: &Plan, hosts: &[(String, Vec<String>)]) {
        if let Some(m) = &plan.missed {
            let error = missed_message(job, m);
            tracing::warn!(job = %job.name, missed = m.count, "occurrences missed");
            let deadline = m.first + job.ttl;
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
        for occ in &plan.runs {
            if job.target_all {
                for (host, _) in hosts.iter().filter(|(_, p)| p.contains(&job.pool)) {
                    self.push(
                        job,
                        occ.scheduled_for,
                        Some(host.clone()),
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

    async fn insert(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<usize> {
        if self.job_id.is_empty() {
            return Ok(0);
        }
        let statement = tx.prepare_cached(q::RUNS_INSERT).await?;
        let n = tx
            .execute(
                &statement,
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job(schedule: &str, next_due: DateTime<Utc>, now: DateTime<Utc>, ttl_secs: i64) -> DueJob {
        DueJob {
            id: 1,
            name: "j".into(),
            pool: "default".into(),
            target_all: false,
            schedule: schedule.into(),
            timezone: "UTC".into(),
            ttl: ChronoDuration::seconds(ttl_secs),
            jitter: ChronoDuration::zero(),
            next_due,
            now,
        }
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
    }

    #[test]
    fn a_due_occurrence_becomes_one_pending_run() {
        let j = job(
            "* * * * *",
            at(7, 0, 0),
            at(7, 0, 0) + ChronoDuration::milliseconds(3),
            300,
        );
        let p = plan(
            &j,
            &Schedule::parse("* * * * *", "UTC").unwrap(),
            &mut rand::rng(),
        );
        assert_eq!(p.runs.len(), 1);
        assert_eq!(p.runs[0].deadline, at(7, 5, 0));
        assert_eq!(p.missed, None);
        assert_eq!(p.next_due, Some(at(7, 1, 0)));
    }

    #[test]
    fn a_week_of_minutes_down_is_one_missed_record_and_the_current_one_still_runs() {
        let now = at(7, 0, 30);
        let j = job("* * * * *", now - ChronoDuration::days(7), now, 60);
        let p = plan(
            &j,
            &Schedule::parse("* * * * *", "UTC").unwrap(),
            &mut rand::rng(),
        );
        let m = p.missed.expect("missed occurrences");
        // Every minute of the week except 07:00, whose deadline (07:01) has not passed.
        assert_eq!(m.count, 7 * 24 * 60);
        assert!(!m.capped);
        assert_eq!(m.first, j.next_due);
        assert_eq!(m.last, at(6, 59, 0));
        assert_eq!(p.runs.len(), 1);
        assert_eq!(p.runs[0].scheduled_for, at(7, 0, 0));
        assert_eq!(p.next_due, Some(at(7, 1, 0)));
    }

    #[test]
    fn a_year_of_seconds_down_is_counted_up_to_the_cap_and_skipped_over() {
        let now = at(7, 0, 0);
        let j = job("* * * * * *", now - ChronoDuration::days(365), now, 2);
        let p = plan(
            &j,
            &Schedule::parse("* * * * * *", "UTC").unwrap(),
            &mut rand::rng(),
        );
        let m = p.missed.unwrap();
        assert!(m.capped);
        assert!(m.count >= MISSED_COUNT_CAP);
        // The occurrences within the ttl still run: 06:59:59 and 07:00:00.
        let runs: Vec<_> = p.runs.iter().map(|r| r.scheduled_for).collect();
        assert_eq!(runs, vec![at(6, 59, 59), at(7, 0, 0)]);
    }

    #[test]
    fn jitter_delays_due_at_within_the_bound() {
        let mut j = job("* * * * *", at(7, 0, 0), at(7, 0, 0), 300);
        j.jitter = ChronoDuration::seconds(10);
        let s = Schedule::parse("* * * * *", "UTC").unwrap();
        for _ in 0..100 {
            let p = plan(&j, &s, &mut rand::rng());
            let delay = p.runs[0].due_at - p.runs[0].scheduled_for;
            assert!(delay >= ChronoDuration::zero() && delay < ChronoDuration::seconds(10));
            assert_eq!(
                p.runs[0].deadline - p.runs[0].due_at,
                ChronoDuration::seconds(300)
            );
        }
    }

    #[test]
    fn a_schedule_that_never_fires_again_has_no_next_due() {
        let j = job("0 0 1 1 *", at(7, 0, 0), at(7, 0, 0), 300);
        let s = Schedule::parse("0 0 30 2 *", "UTC").unwrap();
        let p = plan(&j, &s, &mut rand::rng());
        assert_eq!(p.next_due, None);
    }
}

//! Planning one due job's occurrences, pure: from `next_due` up to the database's now, which
//! occurrences still run (a `pending` run each), which are past their deadline (counted
//! into one missed record) and what the next `next_due` is. No I/O: the scheduler reads the
//! job and writes the plan; the tests drive it directly. Every instant is computed with
//! saturating arithmetic: no value of a row can make planning panic.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rand::RngExt;

use super::{DueJob, MAX_RUNS_PER_JOB, MISSED_COUNT_CAP};
use crate::schedule::Schedule;

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
/// `schedule` None is a one-off: the occurrence at `next_due` and no other.
pub fn plan(job: &DueJob, schedule: Option<&Schedule>, rng: &mut impl rand::Rng) -> Plan {
    let next_after = |at| schedule.and_then(|s| s.next_after(at));
    let now = job.now;
    // Before this instant an occurrence is past its deadline whatever its jitter. The sums
    // saturate: ttl and jitter are clamped at read, but nothing here may panic on a row.
    let horizon = earlier(
        now,
        job.ttl
            .checked_add(&job.jitter)
            .unwrap_or(ChronoDuration::MAX),
    );
    let mut runs = Vec::new();
    let mut missed: Option<Missed> = None;
    let mut occ = Some(job.next_due);
    while let Some(at) = occ {
        if at > now || runs.len() >= MAX_RUNS_PER_JOB {
            break;
        }
        let due_at = later(at, random_below(job.jitter, rng));
        let deadline = later(due_at, job.ttl);
        if at >= horizon && deadline > now {
            runs.push(Occurrence {
                scheduled_for: at,
                due_at,
                deadline,
            });
            occ = next_after(at);
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
            next_after(earlier(horizon.max(at), ChronoDuration::nanoseconds(1)))
        } else {
            next_after(at)
        };
    }
    Plan {
        runs,
        missed,
        next_due: occ,
    }
}

/// `t + d`, or the last representable instant.
pub(super) fn later(t: DateTime<Utc>, d: ChronoDuration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, or the first representable instant.
fn earlier(t: DateTime<Utc>, d: ChronoDuration) -> DateTime<Utc> {
    t.checked_sub_signed(d).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn random_below(limit: ChronoDuration, rng: &mut impl rand::Rng) -> ChronoDuration {
    let micros = limit.num_microseconds().unwrap_or(i64::MAX);
    if micros <= 0 {
        return ChronoDuration::zero();
    }
    ChronoDuration::microseconds(rng.random_range(0..micros))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::scheduler::DueJob;
    use chrono::TimeZone;

    fn job(schedule: &str, next_due: DateTime<Utc>, now: DateTime<Utc>, ttl_secs: i64) -> DueJob {
        DueJob {
            id: 1,
            name: "j".into(),
            pool: "default".into(),
            target_all: false,
            schedule: Some(schedule.into()),
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
            Some(&Schedule::parse("* * * * *", "UTC").unwrap()),
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
            Some(&Schedule::parse("* * * * *", "UTC").unwrap()),
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
            Some(&Schedule::parse("* * * * * *", "UTC").unwrap()),
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
            let p = plan(&j, Some(&s), &mut rand::rng());
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
        let p = plan(&j, Some(&s), &mut rand::rng());
        assert_eq!(p.next_due, None);
    }

    #[test]
    fn a_one_off_is_one_run_then_no_next_due_or_one_missed_record() {
        let j = job("", at(7, 0, 0), at(7, 0, 1), 300);
        let p = plan(&j, None, &mut rand::rng());
        assert_eq!(p.runs.len(), 1);
        assert_eq!(p.next_due, None);
        let late = job("", at(7, 0, 0), at(8, 0, 0), 300);
        let p = plan(&late, None, &mut rand::rng());
        assert!(p.runs.is_empty());
        assert_eq!(p.missed.map(|m| m.count), Some(1));
        assert_eq!(p.next_due, None);
    }

    #[test]
    fn extreme_intervals_and_times_do_not_panic() {
        let ancient = Utc.with_ymd_and_hms(-4713, 1, 1, 0, 0, 0).unwrap();
        let s = Schedule::parse("* * * * *", "UTC").unwrap();
        for (ttl, jitter) in [
            (ChronoDuration::MAX, ChronoDuration::MAX),
            (ChronoDuration::MAX, ChronoDuration::zero()),
            (ChronoDuration::seconds(1), ChronoDuration::MAX),
        ] {
            let mut j = job("* * * * *", ancient, at(7, 0, 0), 1);
            j.ttl = ttl;
            j.jitter = jitter;
            plan(&j, Some(&s), &mut rand::rng());
            plan(&j, None, &mut rand::rng());
        }
    }
}

//! Job schedules: parsing a cron expression read in an IANA time zone, and finding the next
//! occurrence after a given instant.
//!
//! This module owns the schedule syntax (what is accepted, and the error that names the bad
//! field), the day-of-month/day-of-week rule and the daylight-saving rules. It deliberately
//! does not own time itself: it never reads a clock (callers pass the previous scheduled
//! instant, or the database's "now"), and it knows nothing of jitter, ttl or due runs; those
//! belong to the scheduler.
//!
//! The syntax is cronie's: 5 fields `minute hour day-of-month month day-of-week`, or 6 with
//! a leading seconds field; numbers, three-letter names (`jan`, `mon`, any case), `*`, ranges
//! `a-b`, lists `a,b`, steps `*/n` and `a-b/n`; day-of-week 0-7 with both 0 and 7 Sunday, and
//! a day-of-week range that ends on Sunday written `0` or `sun` ending on 7 (`fri-sun`, `5-0`
//! and `sat-sun` are cronie's `5-7` and `6-7`); the macros `@yearly @annually @monthly
//! @weekly @daily @midnight @hourly`. Beyond cronie, `a/n` is read as `a-<last>/n` (cronie
//! refuses it). Refused: `@reboot`, quartz `L W # ?`, a year field, a step wider than its
//! field (`*/90` in minutes is not "every 90 minutes"), and two readings of cronie's that
//! cannot be what was meant: it applies the "ends in 0 means 7" rule to every field (hour
//! `5-0` would be hours 5-7) and skips it for a stepped range (day-of-week `5-0/2` would be
//! no day at all). The parsing is in `fields.rs`; each field is checked there and then
//! rewritten as plain numeric lists, so croner only ever sees a pattern whose meaning is
//! unambiguous, and croner's extensions are unreachable.
//!
//! Croner does the calendar search, on the *wall clock*: it is handed wall times dressed as
//! UTC, where no clock ever jumps. Mapping wall times to instants is done here and in
//! `dst.rs`, because croner's own time-zone handling calls a job "fixed-time" only when
//! seconds, minute and hour are each a single value, so `0,30 2 * * *` would be skipped
//! entirely on a spring-forward day and run twice on a fall-back day. Its day rule also
//! differs: it treats only a bare `*` as unrestricted, so `0 0 */2 * 1` would mean "odd days
//! or Mondays", where cron means "odd days that are Mondays"; this module tells croner to AND
//! the two fields instead. Croner is kept for the search because that is all it is asked to
//! do; every decision cron makes differently lives here.
//!
//! Zones are looked up in the host's tz database (`dst.rs`), the one cron and PostgreSQL use.
//!
//! # Days
//!
//! When both day-of-month and day-of-week are restricted, a day matches if either matches
//! (`0 0 13 * 5` is every 13th and every Friday). A field that starts with `*` counts as
//! unrestricted, and then the other field alone decides; for a stepped `*/2` this means the
//! two are ANDed, exactly as in cronie.
//!
//! # Daylight saving time
//!
//! Cronie's rule, exactly. Its parser (`entry.c`) sets `MIN_STAR` when the minute field's
//! first character is `*`, and `HR_STAR` likewise for the hour field (`@hourly` sets
//! `HR_STAR`; the other macros set neither). A job with either flag is a *wildcard* job, any
//! other a *fixed-time* job: `*`, `*/15` and `*/2` are wildcards; `0-6/2`, `2/3`, `1-23/2`
//! and `5,*/30` (first character `5`) are not. Here the seconds field counts as a third such
//! field, read like the minute. Cronie's main loop (`cron.c`) counts minutes of wall time
//! and compares its virtual clock with the real one on each wake-up (`wakeupKind`):
//!
//! - one minute on: run what matches that minute;
//! - 1-5 minutes on (`small`, a late wake-up): run every minute missed, all jobs;
//! - more than 5 minutes and at most 3 hours on (`medium`, spring forward): run the
//!   wildcard jobs for the current minute only, then the fixed-time jobs for every minute
//!   skipped, at once;
//! - up to 3 hours back (`negative`, fall back): run only the wildcard jobs, for the
//!   current minute; the virtual clock waits until the wall clock catches up, so fixed-time
//!   jobs do not run a second time;
//! - more than 3 hours either way: the clock was set; jump and run what matches now.
//!
//! So fixed-time jobs are about a time of day, wildcard jobs about elapsed time. With wall
//! time W matching the pattern:
//!
//! ```text
//!  spring forward, Europe/Amsterdam 2026-03-29: at 01:00 UTC 02:00 CET becomes 03:00 CEST
//!
//!    UTC          00:00  00:30  01:00  01:30
//!    wall clock   01:00  01:30  03:00  03:30      (02:00-02:59 never happens)
//!    30 2 * * *                 ^                 fixed: first instant after the gap
//!    30 0-6/2 * * *             ^                 fixed too (starts with 3 and 0)
//!    0 * * * *    ^             ^                 wildcard: 02:00 is simply gone
//!
//!  fall back, Europe/Amsterdam 2026-10-25: at 01:00 UTC 03:00 CEST becomes 02:00 CET
//!
//!    UTC          00:00  00:30  01:00  01:30  02:00
//!    wall clock   02:00  02:30  02:00  02:30  03:00
//!                 CEST   CEST   CET    CET    CET
//!    30 2 * * *          ^                        fixed: the earlier instant only
//!    0 * * * *    ^             ^             ^   wildcard: both, real time goes on
//! ```
//!
//! - W happens once: that instant.
//! - W happens twice (fall back): fixed-time jobs run at the earlier instant only, wildcard
//!   jobs at both.
//! - W never happens (spring forward): fixed-time jobs run at the first instant after the
//!   gap; several skipped times of one gap collapse into that one run (and with a real
//!   occurrence at that instant, as `0 2,3 * * *` has at 03:00). Wildcard jobs skip it.
//!
//! `next_after` returns the first such instant strictly after the one it is given, so no
//! occurrence is returned twice and none is passed over, whether it is given the previous
//! occurrence or any other instant (it may be in either half of a repeated hour).

mod dst;
mod fields;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use dst::{Local, first_instant};
pub use dst::{Zone, database};
use fields::parse_fields;

/// A parsed schedule. Parse once; `next_after` then costs a couple of microseconds.
#[derive(Clone, Debug)]
pub struct Schedule {
    expr: String,
    tz: Zone,
    /// The canonical numeric pattern, searched on the wall clock (see the module doc).
    cron: Cron,
    /// Fixed-time job in the DST sense (see the module doc).
    fixed_time: bool,
    /// No calendar day can ever match (`0 0 30 2 *`); answered without searching.
    never: bool,
    /// Day of month and day of week both restrict (one of them is `*`): cron's wildcard rule.
    dom_and_dow: bool,
}

/// Why an expression or time zone is unusable; the message names the bad field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    message: String,
}

impl Schedule {
    /// Parses a cron expression read in the IANA zone `timezone`.
    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let fields = parse_fields(expr)?;
        let tz = Zone::get(timezone)?;
        let dom_and_dow = fields.dom_star || fields.dow_star;
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(dom_and_dow)
            .build()
            .parse(&fields.canonical())
            // Unreachable for a pattern that passed the checks above; an error beats a panic.
            .map_err(|e| {
                ScheduleError::new(format!("schedule \"{expr}\" was not understood: {e}"))
            })?;
        Ok(Schedule {
            expr: expr.to_owned(),
            tz,
            cron,
            fixed_time: fields.fixed_time(),
            never: fields.never_matches(),
            dom_and_dow,
        })
    }

    /// The first occurrence strictly after `after` (a previous scheduled instant or "now"),
    /// or None if there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.never {
            return None;
        }
        // Occurrences fall on whole seconds, so "after 12:00:00.5" is "after 12:00:00".
        let after = DateTime::from_timestamp(after.timestamp(), 0)?;
        let local = self.wall_of(after)?;
        let fold = self.fold_of(after, local)?;
        let (mut from, mut inclusive) = match fold {
            // A fixed-time job ran at the earlier instant of every time left in this
            // repeated range, so it resumes where the range ends.
            Fold::Later { range_end } if self.fixed_time => (range_end, true),
            _ => (local, false),
        };
        // Wall order is not time order here: the second pass over the repeated range is
        // still ahead, and an interval job runs there too.
        let second_pass = match fold {
            Fold::Earlier { range_start } if !self.fixed_time => {
                self.in_second_pass(range_start, after)
            }
            _ => None,
        };
        // Each hop moves past a wall time that gave nothing usable; realistic zones need at
        // most two, the bound only stops a pathological zone from looping.
        for _ in 0..8 {
            let wall = self.next_wall(from, inclusive)?;
            match self.resolve(wall, after)? {
                Step::Found(found) => return Some(second_pass.map_or(found, |s| s.min(found))),
                Step::Resume(next, incl) => (from, inclusive) = (next, incl),
            }
        }
        second_pass
    }

    /// The zone the expression is read in.
    pub fn timezone(&self) -> &Zone {
        &self.tz
    }

    /// The expression as it was given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The schedule in English words ("At 03:00 on Monday"), by croner, from the pattern the
    /// guardians search with (so a `@daily` or a named month reads as what it means).
    pub fn describe(&self) -> String {
        // The expression as written reads better than the expanded pattern ("every 5
        // minutes", not a list of twelve); the pattern serves what croner reads otherwise.
        CronParser::builder()
            .seconds(Seconds::Optional)
            .dom_and_dow(self.dom_and_dow)
            .build()
            .parse(&self.expr)
            .map_or_else(|_| self.cron.describe(), |c| c.describe())
    }

    /// The first wall time at or after `from` that matches the pattern, by croner.
    fn next_wall(&self, from: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        // Past its year limit, or for a pattern it cannot match, croner returns an error
        // rather than searching on; both mean "no next occurrence".
        let next = self
            .cron
            .find_next_occurrence(&from.and_utc(), inclusive)
            .ok()?;
        Some(next.naive_utc())
    }

    /// Turns a matching wall time into the occurrence it gives after `after`, if any, or says
    /// where the wall-clock search goes on.
    fn resolve(&self, wall: NaiveDateTime, after: DateTime<Utc>) -> Option<Step> {
        Some(match self.tz.local(wall)? {
            Local::Single(t) => {
                if t > after {
                    Step::Found(t)
                } else {
                    Step::Resume(wall, false)
                }
            }
            Local::Twice(earlier, later) => {
                if earlier > after {
                    Step::Found(earlier)
                } else if !self.fixed_time && later > after {
                    Step::Found(later)
                } else {
                    Step::Resume(wall, false)
                }
            }
            Local::Gap => {
                let end = self.gap_end(wall)?;
                if self.fixed_time && end > after {
                    Step::Found(end)
                } else {
                    // Skip the rest of the gap at once: every wall time in it is a miss.
                    Step::Resume(self.wall_of(end)?, true)
                }
            }
        })
    }

    /// Where `after` sits when its wall time happens twice.
    fn fold_of(&self, after: DateTime<Utc>, local: NaiveDateTime) -> Option<Fold> {
        let Local::Twice(earlier, later) = self.tz.local(local)? else {
            return Some(Fold::Once);
        };
        let offset = |t: DateTime<Utc>| self.tz.offset_at(t);
        let before = offset(earlier);
        let switch = first_instant(earlier, later, |t| offset(t) != before)?;
        Some(if after == earlier {
            Fold::Earlier {
                range_start: self.wall_of(switch)?,
            }
        } else {
            Fold::Later {
                range_end: local.checked_add_signed(switch - earlier)?,
            }
        })
    }

    /// The later instant of the first matching wall time in the repeated range that starts at
    /// `range_start`, when that is after `after`.
    fn in_second_pass(
        &self,
        range_start: NaiveDateTime,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let wall = self.next_wall(range_start, true)?;
        match self.tz.local(wall)? {
            Local::Twice(_, later) => (later > after).then_some(later),
            _ => None,
        }
    }

    /// The first instant after the gap that swallows the wall time `wall`.
    fn gap_end(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        // Every zone's offset, local mean times included, is within 16 hours of UTC, so
        // this window holds the jump over `wall`.
        let window = TimeDelta::hours(17);
        let lo = wall.checked_sub_signed(window)?.and_utc();
        let hi = wall.checked_add_signed(window)?.and_utc();
        first_instant(lo, hi, |t| self.wall_of(t).is_some_and(|w| w >= wall))
    }

    /// The wall clock in the schedule's zone at `t`.
    fn wall_of(&self, t: DateTime<Utc>) -> Option<NaiveDateTime> {
        self.tz.wall_of(t)
    }
}

impl ScheduleError {
    fn new(message: String) -> ScheduleError {
        ScheduleError { message }
    }
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ScheduleError {}

/// Where an instant sits relative to a repeated range of wall times (fall back).
#[derive(Clone, Copy)]
enum Fold {
    /// Its wall time happens once.
    Once,
    /// It is the first of the two instants of its wall time; the second pass over the range
    /// starts at wall time `range_start`.
    Earlier { range_start: NaiveDateTime },
    /// It is the second; `range_end` is the first wall time after the range.
    Later { range_end: NaiveDateTime },
}

/// What one matching wall time gave.
enum Step {
    Found(DateTime<Utc>),
    /// Nothing here: search on from this wall time (inclusive or not).
    Resume(NaiveDateTime, bool),
}

#[cfg(test)]
mod tests;

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
//! `a-b`, lists `a,b`, steps `*/n` and `a-b/n`; day-of-week 0-7 with both 0 and 7 Sunday; the
//! macros `@yearly @annually @monthly @weekly @daily @midnight @hourly`. Beyond cronie, `a/n`
//! is read as `a-<last>/n` (cronie refuses it). Refused: `@reboot`, quartz `L W # ?`, a year
//! field, and a step wider than its field (`*/90` in minutes is not "every 90 minutes").
//! Each field is checked here first and then rewritten as plain numeric lists, so croner only
//! ever sees a pattern whose meaning is unambiguous, and croner's extensions are unreachable.
//!
//! Croner does the calendar search, on the *wall clock*: it is handed wall times dressed as
//! UTC, where no clock ever jumps. Mapping wall times to instants is done here, because
//! croner's own time-zone handling calls a job "fixed-time" only when seconds, minute and hour
//! are each a single value, so `0,30 2 * * *` would be skipped entirely on a spring-forward
//! day and run twice on a fall-back day. Its day rule also differs: it treats only a bare `*`
//! as unrestricted, so `0 0 */2 * 1` would mean "odd days or Mondays", where cron means "odd
//! days that are Mondays"; this module tells croner to AND the two fields instead.
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
//! A job is *fixed-time* unless its hour field holds `*` or a step, or its minute or seconds
//! field holds `*` (cronie's `HR_STAR`/`MIN_STAR`; the spec adds hour steps). Fixed-time jobs
//! are about a time of day, the others about elapsed time. With wall time W matching the
//! pattern:
//!
//! ```text
//!  spring forward, Europe/Amsterdam 2026-03-29: at 01:00 UTC 02:00 CET becomes 03:00 CEST
//!
//!    UTC          00:00  00:30  01:00  01:30
//!    wall clock   01:00  01:30  03:00  03:30      (02:00-02:59 never happens)
//!    30 2 * * *                 ^                 fixed: first instant after the gap
//!    0 * * * *    ^             ^                 interval: 02:00 is simply gone
//!
//!  fall back, Europe/Amsterdam 2026-10-25: at 01:00 UTC 03:00 CEST becomes 02:00 CET
//!
//!    UTC          00:00  00:30  01:00  01:30  02:00
//!    wall clock   02:00  02:30  02:00  02:30  03:00
//!                 CEST   CEST   CET    CET    CET
//!    30 2 * * *          ^                        fixed: the earlier instant only
//!    0 * * * *    ^             ^             ^   interval: both, real time goes on
//! ```
//!
//! - W happens once: that instant.
//! - W happens twice (fall back): fixed-time jobs run at the earlier instant only, the others
//!   at both.
//! - W never happens (spring forward): fixed-time jobs run at the first instant after the
//!   gap; several skipped times of one gap collapse into that one run (and with a real
//!   occurrence at that instant, as `0 2,3 * * *` has at 03:00). The others skip it.
//!
//! `next_after` returns the first such instant strictly after the one it is given, so no
//! occurrence is returned twice and none is passed over, whether it is given the previous
//! occurrence or any other instant (it may be in either half of a repeated hour).

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed schedule. Parse once; `next_after` then costs a couple of microseconds.
#[derive(Clone, Debug)]
pub struct Schedule {
    expr: String,
    tz: Tz,
    /// The canonical numeric pattern, searched on the wall clock (see the module doc).
    cron: Cron,
    /// Fixed-time job in the DST sense (see the module doc).
    fixed_time: bool,
    /// No calendar day can ever match (`0 0 30 2 *`); answered without searching.
    never: bool,
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
        let tz = timezone.parse::<Tz>().map_err(|_| {
            ScheduleError::new(format!(
                "unknown time zone \"{timezone}\": use an IANA name such as \"Europe/Amsterdam\" or \"UTC\""
            ))
        })?;
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(fields.dom_star || fields.dow_star)
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
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The expression as it was given.
    pub fn expr(&self) -> &str {
        &self.expr
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
        Some(match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => {
                let t = t.with_timezone(&Utc);
                if t > after {
                    Step::Found(t)
                } else {
                    Step::Resume(wall, false)
                }
            }
            LocalResult::Ambiguous(a, b) => {
                let (earlier, later) = ordered(a.with_timezone(&Utc), b.with_timezone(&Utc));
                if earlier > after {
                    Step::Found(earlier)
                } else if !self.fixed_time && later > after {
                    Step::Found(later)
                } else {
                    Step::Resume(wall, false)
                }
            }
            LocalResult::None => {
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
        let LocalResult::Ambiguous(a, b) = self.tz.from_local_datetime(&local) else {
            return Some(Fold::Once);
        };
        let (earlier, later) = ordered(a.with_timezone(&Utc), b.with_timezone(&Utc));
        let offset = |t: DateTime<Utc>| self.tz.offset_from_utc_datetime(&t.naive_utc()).fix();
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
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Ambiguous(a, b) => {
                let (_, later) = ordered(a.with_timezone(&Utc), b.with_timezone(&Utc));
                (later > after).then_some(later)
            }
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

    /// The wall clock in the schedule's zone at `t`; None at the very ends of chrono's range,
    /// where `naive_local` would panic.
    fn wall_of(&self, t: DateTime<Utc>) -> Option<NaiveDateTime> {
        let offset = self.tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        t.naive_utc().checked_add_offset(offset)
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

fn ordered(a: DateTime<Utc>, b: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    if a <= b { (a, b) } else { (b, a) }
}

/// Binary search for the first whole second in `(lo, hi]` where `pred` holds, given that it
/// does not hold at `lo` and does at `hi`; None when those ends are not as promised.
fn first_instant(
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
    pred: impl Fn(DateTime<Utc>) -> bool,
) -> Option<DateTime<Utc>> {
    if pred(lo) || !pred(hi) {
        return None;
    }
    let (mut lo, mut hi) = (lo.timestamp(), hi.timestamp());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if pred(DateTime::from_timestamp(mid, 0)?) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Second => "seconds",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        }
    }

    /// (first value, last value `*` covers, largest value accepted): only day-of-week
    /// differs, accepting 7 as a second name for Sunday.
    fn bounds(self) -> (u32, u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59, 59),
            Field::Hour => (0, 23, 23),
            Field::DayOfMonth => (1, 31, 31),
            Field::Month => (1, 12, 12),
            Field::DayOfWeek => (0, 6, 7),
        }
    }

    /// Names for the values from the first one up, and what they are called.
    fn names(self) -> Option<(&'static [&'static str], &'static str)> {
        match self {
            Field::Month => Some((&MONTHS, "month name (jan-dec)")),
            Field::DayOfWeek => Some((&DAYS, "day name (sun-sat)")),
            _ => None,
        }
    }
}

/// The values one field selects, as bits, and the shape it was written in.
#[derive(Clone, Copy, Debug, Default)]
struct FieldSet {
    bits: u64,
    /// Some list item is `*` or `*/n`.
    wild: bool,
    /// Some list item has a step.
    stepped: bool,
}

impl FieldSet {
    fn has(self, value: u32) -> bool {
        value < 64 && self.bits & (1 << value) != 0
    }
}

#[derive(Clone, Copy, Debug)]
struct Fields {
    second: FieldSet,
    minute: FieldSet,
    hour: FieldSet,
    dom: FieldSet,
    month: FieldSet,
    dow: FieldSet,
    /// The day fields start with `*`, which makes them unrestricted for the OR rule.
    dom_star: bool,
    dow_star: bool,
}

fn parse_fields(expr: &str) -> Result<Fields, ScheduleError> {
    let trimmed = expr.trim();
    let text = if trimmed.starts_with('@') {
        expand_macro(trimmed)?
    } else {
        trimmed
    };
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (second, rest) = match parts.len() {
        5 => ("0", &parts[..]),
        6 => (parts[0], &parts[1..]),
        n => {
            return Err(ScheduleError::new(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with leading seconds, got {n}"
            )));
        }
    };
    Ok(Fields {
        second: parse_field(Field::Second, second)?,
        minute: parse_field(Field::Minute, rest[0])?,
        hour: parse_field(Field::Hour, rest[1])?,
        dom: parse_field(Field::DayOfMonth, rest[2])?,
        month: parse_field(Field::Month, rest[3])?,
        dow: parse_field(Field::DayOfWeek, rest[4])?,
        dom_star: rest[2].starts_with('*'),
        dow_star: rest[4].starts_with('*'),
    })
}

fn expand_macro(text: &str) -> Result<&'static str, ScheduleError> {
    if text.eq_ignore_ascii_case("@reboot") {
        return Err(ScheduleError::new(
            "@reboot is not supported: leave the schedule empty (NULL) and trigger the job instead"
                .to_owned(),
        ));
    }
    match MACROS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
    {
        Some((_, expansion)) => Ok(expansion),
        None => Err(ScheduleError::new(format!(
            "unknown macro \"{text}\": use one of @yearly @annually @monthly @weekly @daily @midnight @hourly, or 5 cron fields"
        ))),
    }
}

fn parse_field(field: Field, text: &str) -> Result<FieldSet, ScheduleError> {
    parse_list(field, text).map_err(|problem| {
        ScheduleError::new(format!("{} field \"{text}\": {problem}", field.name()))
    })
}

fn parse_list(field: Field, text: &str) -> Result<FieldSet, String> {
    if let Some(c) = text
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !"*,-/".contains(*c))
    {
        return Err(match c {
            '?' | '#' => format!("\"{c}\" is a quartz extension, which is not supported"),
            _ => format!(
                "unexpected \"{c}\": use numbers, names, \"*\", \"a-b\", \"a,b\" and \"/n\""
            ),
        });
    }
    let mut set = FieldSet::default();
    for item in text.split(',') {
        if item.is_empty() {
            return Err("empty list element".to_owned());
        }
        let (first, last, step, star) = parse_item(field, item)?;
        for value in (first..=last).step_by(step as usize) {
            set.bits |= 1 << value;
        }
        set.wild |= star;
        set.stepped |= item.contains('/');
    }
    if field == Field::DayOfWeek && set.has(7) {
        set.bits = (set.bits | 1) & !(1 << 7);
    }
    Ok(set)
}

/// One list element: `(first, last, step, is_star)`.
fn parse_item(field: Field, item: &str) -> Result<(u32, u32, u32, bool), String> {
    let (min, last, _) = field.bounds();
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(field, step)?)),
        None => (item, None),
    };
    if range == "*" {
        return Ok((min, last, step.unwrap_or(1), true));
    }
    if range.is_empty() {
        return Err(format!(
            "missing start before \"/\" in \"{item}\" (write \"*/n\")"
        ));
    }
    let (first, end) = match range.split_once('-') {
        Some((a, b)) => {
            let (first, end) = (parse_value(field, a, item)?, parse_value(field, b, item)?);
            if first > end {
                return Err(format!(
                    "range \"{range}\" runs backwards; split a wrap-around in two, as in \"22-23,0-2\""
                ));
            }
            (first, end)
        }
        // `a/n` is read as `a-<last>/n`; a lone value is itself.
        None => {
            let value = parse_value(field, range, item)?;
            (value, step.map_or(value, |_| last.max(value)))
        }
    };
    Ok((first, end, step.unwrap_or(1), false))
}

fn parse_step(field: Field, step: &str) -> Result<u32, String> {
    let (min, last, _) = field.bounds();
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("step \"{step}\" is not a number"));
    }
    // A step wider than the field is almost always a mistake (`*/90` minutes is not "every
    // 90 minutes"), so it is refused; cronie would quietly read it as the first value only.
    match step.parse::<u32>() {
        Ok(n) if (1..=last - min).contains(&n) => Ok(n),
        _ => Err(format!("step {step} is out of range 1-{}", last - min)),
    }
}

fn parse_value(field: Field, token: &str, item: &str) -> Result<u32, String> {
    let (min, _, max) = field.bounds();
    if token.is_empty() {
        return Err(format!("\"{item}\" is missing a number"));
    }
    if token.bytes().all(|b| b.is_ascii_digit()) {
        return match token.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!("{token} is out of range {min}-{max}")),
        };
    }
    if let Some((names, _)) = field.names()
        && let Some(index) = names.iter().position(|n| n.eq_ignore_ascii_case(token))
    {
        return Ok(min + index as u32);
    }
    let quartz = matches!(field, Field::DayOfMonth | Field::DayOfWeek)
        && token
            .bytes()
            .any(|b| matches!(b.to_ascii_uppercase(), b'L' | b'W'));
    Err(if token.contains('*') {
        format!("\"*\" stands alone or before a step, as in \"*/5\", not in \"{item}\"")
    } else if quartz {
        format!("\"{token}\" is a quartz extension (L, W), which is not supported")
    } else if let Some((_, what)) = field.names() {
        format!("\"{token}\" is neither a number nor a {what}")
    } else {
        format!("\"{token}\" is not a number")
    })
}

impl Fields {
    /// The pattern as croner should read it: six fields of plain numbers, Sunday as 0.
    fn canonical(&self) -> String {
        let list = |set: FieldSet, field: Field| {
            let (min, last, _) = field.bounds();
            let values: Vec<String> = (min..=last)
                .filter(|v| set.has(*v))
                .map(|v| v.to_string())
                .collect();
            values.join(",")
        };
        [
            list(self.second, Field::Second),
            list(self.minute, Field::Minute),
            list(self.hour, Field::Hour),
            list(self.dom, Field::DayOfMonth),
            list(self.month, Field::Month),
            list(self.dow, Field::DayOfWeek),
        ]
        .join(" ")
    }

    /// Fixed-time in the DST sense of the module doc.
    fn fixed_time(&self) -> bool {
        !(self.second.wild || self.minute.wild || self.hour.wild || self.hour.stepped)
    }

    /// True when no day can ever match, so that a search would only run into croner's
    /// year limit. Only day-of-month alone can do that: a restricted day-of-week ORed in
    /// matches every week, and ANDed with an existing date it matches within a few years.
    fn never_matches(&self) -> bool {
        const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        if self.dom_star || !self.dow_star {
            return false;
        }
        !(1..=12u32)
            .any(|m| self.month.has(m) && (1..=LONGEST[m as usize - 1]).any(|d| self.dom.has(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike as _, Timelike as _};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The next `n` occurrences after `from`, as RFC 3339 UTC strings.
    fn seq(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let schedule = Schedule::parse(expr, tz).unwrap();
        let mut t = at(from);
        let mut out = Vec::new();
        for _ in 0..n {
            match schedule.next_after(t) {
                Some(next) => {
                    assert!(next > t, "{expr}: {next} is not after {t}");
                    out.push(next.format("%Y-%m-%dT%H:%M:%SZ").to_string());
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    fn err(expr: &str) -> String {
        Schedule::parse(expr, "UTC").unwrap_err().to_string()
    }

    #[test]
    fn range_errors_name_the_field() {
        let cases = [
            (
                "61 * * * * *",
                "seconds field \"61\": 61 is out of range 0-59",
            ),
            ("60 * * * *", "minute field \"60\": 60 is out of range 0-59"),
            ("0 24 * * *", "hour field \"24\": 24 is out of range 0-23"),
            (
                "0 0 32 * *",
                "day-of-month field \"32\": 32 is out of range 1-31",
            ),
            (
                "0 0 0 * *",
                "day-of-month field \"0\": 0 is out of range 1-31",
            ),
            ("0 0 * 13 *", "month field \"13\": 13 is out of range 1-12"),
            ("0 0 * 0 *", "month field \"0\": 0 is out of range 1-12"),
            (
                "0 0 * * 8",
                "day-of-week field \"8\": 8 is out of range 0-7",
            ),
            (
                "1,2,99 * * * *",
                "minute field \"1,2,99\": 99 is out of range 0-59",
            ),
            (
                "0 1-25 * * *",
                "hour field \"1-25\": 25 is out of range 0-23",
            ),
            (
                "0 99999999999 * * *",
                "hour field \"99999999999\": 99999999999 is out of range 0-23",
            ),
        ];
        for (expr, want) in cases {
            assert_eq!(err(expr), want, "{expr}");
        }
    }

    #[test]
    fn field_count_errors() {
        let want = |n: usize| {
            format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with leading seconds, got {n}"
            )
        };
        assert_eq!(err("* * *"), want(3));
        assert_eq!(err(""), want(0));
        assert_eq!(err("   "), want(0));
        // A year field makes 7.
        assert_eq!(err("0 0 0 1 1 * 2026"), want(7));
    }

    #[test]
    fn syntax_errors_name_the_field() {
        let cases = [
            (
                "0 0 L * *",
                "day-of-month field \"L\": \"L\" is a quartz extension (L, W), which is not supported",
            ),
            (
                "0 0 15W * *",
                "day-of-month field \"15W\": \"15W\" is a quartz extension (L, W), which is not supported",
            ),
            (
                "0 0 * * 5L",
                "day-of-week field \"5L\": \"5L\" is a quartz extension (L, W), which is not supported",
            ),
            (
                "0 0 * * 5#3",
                "day-of-week field \"5#3\": \"#\" is a quartz extension, which is not supported",
            ),
            (
                "0 0 ? * *",
                "day-of-month field \"?\": \"?\" is a quartz extension, which is not supported",
            ),
            (
                "0 0 * foo *",
                "month field \"foo\": \"foo\" is neither a number nor a month name (jan-dec)",
            ),
            (
                "0 0 * * monday",
                "day-of-week field \"monday\": \"monday\" is neither a number nor a day name (sun-sat)",
            ),
            ("0 mon * * *", "hour field \"mon\": \"mon\" is not a number"),
            (
                "*/0 * * * *",
                "minute field \"*/0\": step 0 is out of range 1-59",
            ),
            (
                "*/60 * * * *",
                "minute field \"*/60\": step 60 is out of range 1-59",
            ),
            (
                "0 0 * */12 *",
                "month field \"*/12\": step 12 is out of range 1-11",
            ),
            (
                "*/x * * * *",
                "minute field \"*/x\": step \"x\" is not a number",
            ),
            (
                "*/ * * * *",
                "minute field \"*/\": step \"\" is not a number",
            ),
            (
                "/5 * * * *",
                "minute field \"/5\": missing start before \"/\" in \"/5\" (write \"*/n\")",
            ),
            (
                "5- * * * *",
                "minute field \"5-\": \"5-\" is missing a number",
            ),
            (
                "-5 * * * *",
                "minute field \"-5\": \"-5\" is missing a number",
            ),
            ("1,,2 * * * *", "minute field \"1,,2\": empty list element"),
            (
                "*-5 * * * *",
                "minute field \"*-5\": \"*\" stands alone or before a step, as in \"*/5\", not in \"*-5\"",
            ),
            (
                "0 22-2 * * *",
                "hour field \"22-2\": range \"22-2\" runs backwards; split a wrap-around in two, as in \"22-23,0-2\"",
            ),
            (
                "0 0 * * fri-mon",
                "day-of-week field \"fri-mon\": range \"fri-mon\" runs backwards; split a wrap-around in two, as in \"22-23,0-2\"",
            ),
            (
                "1/2/3 * * * *",
                "minute field \"1/2/3\": step \"2/3\" is not a number",
            ),
            (
                "0 0 * * 1-2-3",
                "day-of-week field \"1-2-3\": \"2-3\" is neither a number nor a day name (sun-sat)",
            ),
            (
                "0 0 1 1 * 2026",
                "day-of-week field \"2026\": 2026 is out of range 0-7",
            ),
            (
                "0 0 1 é *",
                "month field \"é\": unexpected \"é\": use numbers, names, \"*\", \"a-b\", \"a,b\" and \"/n\"",
            ),
            (
                "+5 * * * *",
                "minute field \"+5\": unexpected \"+\": use numbers, names, \"*\", \"a-b\", \"a,b\" and \"/n\"",
            ),
        ];
        for (expr, want) in cases {
            assert_eq!(err(expr), want, "{expr}");
        }
    }

    #[test]
    fn macros() {
        let from = "2026-05-13T10:20:00Z";
        for (name, expansion) in MACROS {
            assert_eq!(
                seq(name, "UTC", from, 3),
                seq(expansion, "UTC", from, 3),
                "{name}"
            );
            assert_eq!(
                seq(&name.to_uppercase(), "UTC", from, 1),
                seq(expansion, "UTC", from, 1)
            );
        }
        assert_eq!(seq("@hourly", "UTC", from, 1), ["2026-05-13T11:00:00Z"]);
        assert_eq!(seq("@weekly", "UTC", from, 1), ["2026-05-17T00:00:00Z"]);
        assert_eq!(seq("@monthly", "UTC", from, 1), ["2026-06-01T00:00:00Z"]);
        assert_eq!(
            err("@reboot"),
            "@reboot is not supported: leave the schedule empty (NULL) and trigger the job instead"
        );
        assert!(err("@fortnightly").starts_with("unknown macro \"@fortnightly\": use one of"));
        assert!(err("@daily 5").starts_with("unknown macro \"@daily 5\""));
        assert!(err("@").starts_with("unknown macro \"@\""));
    }

    #[test]
    fn yearly_in_a_zone() {
        let got = seq("@yearly", "Europe/Amsterdam", "2026-06-01T00:00:00Z", 2);
        assert_eq!(got, ["2026-12-31T23:00:00Z", "2027-12-31T23:00:00Z"]);
        assert_eq!(
            seq("@annually", "UTC", "2026-01-01T00:00:00Z", 1),
            ["2027-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn unknown_time_zone() {
        let e = Schedule::parse("* * * * *", "Mars/Base").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown time zone \"Mars/Base\": use an IANA name such as \"Europe/Amsterdam\" or \"UTC\""
        );
        assert!(Schedule::parse("* * * * *", "").is_err());
        let s = Schedule::parse(" 0 9 * * 1 ", "America/New_York").unwrap();
        assert_eq!(s.timezone(), chrono_tz::America::New_York);
        assert_eq!(s.expr(), " 0 9 * * 1 ");
    }

    #[test]
    fn names_are_case_insensitive() {
        let named = seq("0 9 * JAN,jul Mon-fri", "UTC", "2026-01-01T00:00:00Z", 30);
        let numbered = seq("0 9 * 1,7 1-5", "UTC", "2026-01-01T00:00:00Z", 30);
        assert_eq!(named, numbered);
        assert_eq!(named[0], "2026-01-01T09:00:00Z"); // a Thursday
        assert_eq!(named[22], "2026-07-01T09:00:00Z"); // 22 weekdays in January 2026
        // 0 and 7 are both Sunday.
        let sundays = seq("0 0 * * 0", "UTC", "2026-01-01T00:00:00Z", 5);
        assert_eq!(seq("0 0 * * 7", "UTC", "2026-01-01T00:00:00Z", 5), sundays);
        assert_eq!(
            seq("0 0 * * sun", "UTC", "2026-01-01T00:00:00Z", 5),
            sundays
        );
        assert_eq!(sundays[0], "2026-01-04T00:00:00Z");
        assert_eq!(
            seq("0 0 * * 5-7", "UTC", "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-02T00:00:00Z",
                "2026-01-03T00:00:00Z",
                "2026-01-04T00:00:00Z"
            ]
        );
    }

    #[test]
    fn seconds_field() {
        let got = seq("*/20 * * * * *", "UTC", "2026-01-01T00:00:05Z", 4);
        assert_eq!(
            got,
            [
                "2026-01-01T00:00:20Z",
                "2026-01-01T00:00:40Z",
                "2026-01-01T00:01:00Z",
                "2026-01-01T00:01:20Z"
            ]
        );
        assert_eq!(
            seq("30 15 10 * * *", "UTC", "2026-01-01T00:00:00Z", 1),
            ["2026-01-01T10:15:30Z"]
        );
    }

    #[test]
    fn steps() {
        let from = "2026-01-01T00:00:00Z";
        let minutes = |expr: &str| -> Vec<u32> {
            let schedule = Schedule::parse(expr, "UTC").unwrap();
            let mut t = at(from);
            let mut out = Vec::new();
            while let Some(next) = schedule.next_after(t).filter(|n| n.hour() == 0) {
                out.push(next.minute());
                t = next;
            }
            out
        };
        assert_eq!(minutes("*/15 * * * *"), [15, 30, 45]);
        assert_eq!(minutes("10-30/7 * * * *"), [10, 17, 24]);
        assert_eq!(minutes("5/20 * * * *"), [5, 25, 45]);
        assert_eq!(minutes("50/3,1 * * * *"), [1, 50, 53, 56, 59]);
        assert_eq!(minutes("*/59 * * * *"), [59]);
        // `a/n` on day-of-week runs to Saturday; 7 only names Sunday.
        let days: Vec<u32> = seq("0 0 * * 1/2", "UTC", "2026-01-04T00:00:00Z", 4)
            .iter()
            .map(|s| at(s).weekday().num_days_from_sunday())
            .collect();
        assert_eq!(days, [1, 3, 5, 1]);
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: the 13th and every Friday, not Friday the 13th.
        let got = seq("0 0 13 * 5", "UTC", "2026-01-01T00:00:00Z", 8);
        assert_eq!(
            got,
            [
                "2026-01-02T00:00:00Z",
                "2026-01-09T00:00:00Z",
                "2026-01-13T00:00:00Z",
                "2026-01-16T00:00:00Z",
                "2026-01-23T00:00:00Z",
                "2026-01-30T00:00:00Z",
                "2026-02-06T00:00:00Z",
                "2026-02-13T00:00:00Z",
            ]
        );
        // One of them `*`: the other decides alone.
        assert_eq!(
            seq("0 0 13 * *", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2026-01-13T00:00:00Z", "2026-02-13T00:00:00Z"]
        );
        // Both restricted, even if one spells out every day: OR, so every day.
        assert_eq!(
            seq("0 0 1-31 * 1", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]
        );
    }

    #[test]
    fn star_step_in_a_day_field_ands() {
        // Odd days that are Mondays (croner alone would say odd days or Mondays).
        let got = seq("0 0 */2 * 1", "UTC", "2026-01-01T00:00:00Z", 5);
        assert_eq!(
            got,
            [
                "2026-01-05T00:00:00Z",
                "2026-01-19T00:00:00Z",
                "2026-02-09T00:00:00Z",
                "2026-02-23T00:00:00Z",
                "2026-03-09T00:00:00Z",
            ]
        );
        // The 1st of a month falling on Sun/Tue/Thu/Sat.
        let got = seq("0 0 1 * */2", "UTC", "2026-01-01T00:00:00Z", 3);
        assert_eq!(
            got,
            [
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z",
                "2026-08-01T00:00:00Z"
            ]
        );
    }

    #[test]
    fn leap_day() {
        let got = seq("0 0 29 2 *", "UTC", "2025-01-01T00:00:00Z", 3);
        assert_eq!(
            got,
            [
                "2028-02-29T00:00:00Z",
                "2032-02-29T00:00:00Z",
                "2036-02-29T00:00:00Z"
            ]
        );
        // 2100 is not a leap year.
        assert_eq!(
            seq("0 0 29 2 *", "UTC", "2097-01-01T00:00:00Z", 1),
            ["2104-02-29T00:00:00Z"]
        );
    }

    #[test]
    fn never_matching_returns_none_quickly() {
        let start = std::time::Instant::now();
        for expr in [
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 30,31 feb */2",
            "0 0 0 31 2 * ",
        ] {
            let schedule = Schedule::parse(expr, "Europe/Amsterdam").unwrap();
            assert_eq!(
                schedule.next_after(at("2026-01-01T00:00:00Z")),
                None,
                "{expr}"
            );
        }
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
        // ORed with a day of the week it does match: every Monday in February.
        assert_eq!(
            seq("0 0 30 2 1", "UTC", "2026-01-01T00:00:00Z", 1),
            ["2026-02-02T00:00:00Z"]
        );
        // Past croner's search horizon there is nothing either, and no panic.
        let schedule = Schedule::parse("* * * * *", "UTC").unwrap();
        assert_eq!(schedule.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert!(
            schedule
                .next_after(DateTime::<Utc>::MIN_UTC)
                .is_none_or(|t| t.year() >= 1)
        );
    }

    #[test]
    fn sub_second_after() {
        let schedule = Schedule::parse("0 * * * *", "UTC").unwrap();
        let after = at("2026-01-01T12:00:00.5Z");
        assert_eq!(schedule.next_after(after), Some(at("2026-01-01T13:00:00Z")));
        let after = at("2026-01-01T11:59:59.5Z");
        assert_eq!(schedule.next_after(after), Some(at("2026-01-01T12:00:00Z")));
    }

    // Europe/Amsterdam 2026-03-29: 02:00 CET (01:00Z) jumps to 03:00 CEST.
    #[test]
    fn amsterdam_spring_forward() {
        let tz = "Europe/Amsterdam";
        assert_eq!(
            seq("30 2 * * *", tz, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST
                "2026-03-30T00:30:00Z", // 02:30 CEST
            ]
        );
        assert_eq!(
            seq("0 * * * *", tz, "2026-03-28T23:30:00Z", 3),
            [
                "2026-03-29T00:00:00Z", // 01:00 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST
                "2026-03-29T02:00:00Z",
            ]
        );
        assert_eq!(
            seq("*/15 * * * *", tz, "2026-03-29T00:30:00Z", 3),
            [
                "2026-03-29T00:45:00Z", // 01:45 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST, 15 real minutes later
                "2026-03-29T01:15:00Z",
            ]
        );
        // Several skipped times collapse into one run; a real 03:00 shares it.
        assert_eq!(
            seq("0,30 2 * * *", tz, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"]
        );
        assert_eq!(
            seq("0 2,3 * * *", tz, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"]
        );
        // A skipped hour-step time is simply gone.
        assert_eq!(
            seq("0 */2 * * *", tz, "2026-03-28T22:30:00Z", 2),
            ["2026-03-28T23:00:00Z", "2026-03-29T02:00:00Z"]
        );
    }

    // Europe/Amsterdam 2026-10-25: 03:00 CEST (01:00Z) falls back to 02:00 CET.
    #[test]
    fn amsterdam_fall_back() {
        let tz = "Europe/Amsterdam";
        assert_eq!(
            seq("30 2 * * *", tz, "2026-10-24T12:00:00Z", 2),
            [
                "2026-10-25T00:30:00Z", // 02:30 CEST; the 02:30 CET is the same time of day
                "2026-10-26T01:30:00Z",
            ]
        );
        assert_eq!(
            seq("0 * * * *", tz, "2026-10-24T23:30:00Z", 3),
            [
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T02:00:00Z", // 03:00 CET
            ]
        );
        assert_eq!(
            seq("*/15 * * * *", tz, "2026-10-24T23:50:00Z", 9),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:15:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T00:45:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:15:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T01:45:00Z",
                "2026-10-25T02:00:00Z",
            ]
        );
        assert_eq!(
            seq("0,30 2 * * *", tz, "2026-10-24T12:00:00Z", 3),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:00:00Z"
            ]
        );
        assert_eq!(
            seq("30 */2 * * *", tz, "2026-10-24T23:00:00Z", 3),
            [
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T03:30:00Z"
            ]
        );
    }

    // America/Santiago 2026-09-06: midnight does not happen, 00:00 -04 jumps to 01:00 -03.
    #[test]
    fn midnight_gap() {
        assert_eq!(
            seq("0 0 * * *", "America/Santiago", "2026-09-05T12:00:00Z", 2),
            [
                "2026-09-06T04:00:00Z", // 01:00 -03 on the 6th
                "2026-09-07T03:00:00Z",
            ]
        );
    }

    #[test]
    fn next_after_the_earlier_instant_is_not_the_later() {
        let fixed = Schedule::parse("30 2 * * *", "Europe/Amsterdam").unwrap();
        let cest = at("2026-10-25T00:30:00Z");
        assert_eq!(fixed.next_after(cest), Some(at("2026-10-26T01:30:00Z")));
        // Asked from inside the second pass ("now" at 02:10 CET) it still waits a day.
        assert_eq!(
            fixed.next_after(at("2026-10-25T01:10:00Z")),
            Some(at("2026-10-26T01:30:00Z"))
        );
        // Also when the rest of the second pass is full of times it already ran at.
        let every_minute = Schedule::parse("0-59 2 * * *", "Europe/Amsterdam").unwrap();
        assert_eq!(
            every_minute.next_after(at("2026-10-25T01:10:00Z")),
            Some(at("2026-10-26T01:00:00Z"))
        );
        // From the first pass, before 02:30 CEST, it is that 02:30.
        assert_eq!(fixed.next_after(at("2026-10-25T00:10:00Z")), Some(cest));
        // An interval job asked from late in the first pass goes back to the second one.
        let hourly = Schedule::parse("0 * * * *", "Europe/Amsterdam").unwrap();
        assert_eq!(
            hourly.next_after(at("2026-10-25T00:50:00Z")),
            Some(at("2026-10-25T01:00:00Z"))
        );
        assert_eq!(
            hourly.next_after(at("2026-10-25T01:10:00Z")),
            Some(at("2026-10-25T02:00:00Z"))
        );
    }

    // America/New_York 2026-03-08: 02:00 EST (07:00Z) jumps to 03:00 EDT.
    #[test]
    fn new_york_spring_forward() {
        let tz = "America/New_York";
        assert_eq!(
            seq("30 2 * * *", tz, "2026-03-07T12:00:00Z", 2),
            [
                "2026-03-08T07:00:00Z", // 03:00 EDT
                "2026-03-09T06:30:00Z", // 02:30 EDT
            ]
        );
        assert_eq!(
            seq("0 * * * *", tz, "2026-03-08T05:30:00Z", 3),
            [
                "2026-03-08T06:00:00Z", // 01:00 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT
                "2026-03-08T08:00:00Z",
            ]
        );
        assert_eq!(
            seq("*/15 * * * *", tz, "2026-03-08T06:30:00Z", 3),
            [
                "2026-03-08T06:45:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T07:15:00Z",
            ]
        );
    }

    // America/New_York 2026-11-01: 02:00 EDT (06:00Z) falls back to 01:00 EST.
    #[test]
    fn new_york_fall_back() {
        let tz = "America/New_York";
        // 02:30 happens once here; it is 01:00-01:59 that repeats.
        assert_eq!(
            seq("30 2 * * *", tz, "2026-10-31T12:00:00Z", 2),
            [
                "2026-11-01T07:30:00Z", // 02:30 EST
                "2026-11-02T07:30:00Z",
            ]
        );
        assert_eq!(
            seq("30 1 * * *", tz, "2026-10-31T12:00:00Z", 2),
            [
                "2026-11-01T05:30:00Z", // 01:30 EDT only
                "2026-11-02T06:30:00Z",
            ]
        );
        assert_eq!(
            seq("0 * * * *", tz, "2026-11-01T04:30:00Z", 3),
            [
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST
                "2026-11-01T07:00:00Z", // 02:00 EST
            ]
        );
        assert_eq!(
            seq("*/15 * * * *", tz, "2026-11-01T05:30:00Z", 4),
            [
                "2026-11-01T05:45:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T06:15:00Z",
                "2026-11-01T06:30:00Z",
            ]
        );
    }

    #[test]
    fn classification_follows_cronie() {
        let fixed = |expr: &str| parse_fields(expr).unwrap().fixed_time();
        assert!(fixed("30 2 * * *"));
        assert!(fixed("0,30 1-3 * * *"));
        assert!(fixed("0-59/15 2 * * *"));
        assert!(fixed("@daily"));
        assert!(!fixed("@hourly"));
        assert!(!fixed("* 2 * * *"));
        assert!(!fixed("0 */2 * * *"));
        assert!(!fixed("0 1-23/2 * * *"));
        assert!(!fixed("*/10 30 2 * * *"));
    }

    /// Small deterministic generator, so the fuzz tests need no crate and repeat exactly.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    #[test]
    fn garbage_never_panics() {
        const ATOMS: [&str; 30] = [
            "*",
            "/",
            "-",
            ",",
            " ",
            "\t",
            "0",
            "1",
            "7",
            "9",
            "23",
            "31",
            "59",
            "60",
            "L",
            "W",
            "#",
            "?",
            "@",
            "jan",
            "MON",
            "x",
            "é",
            "🦀",
            "4294967296",
            "-1",
            "@daily",
            "@reboot",
            "\n",
            "",
        ];
        let mut rng = XorShift(0x5eed_cafe_f00d);
        let instants = [
            at("2026-03-29T00:59:59Z"),
            at("2026-10-25T00:30:00Z"),
            at("2026-10-25T01:30:00Z"),
            DateTime::<Utc>::MAX_UTC,
        ];
        // Field-shaped pieces, so that a good share of the strings parse and get evaluated.
        const PIECES: [&str; 16] = [
            "*", "*", "*/5", "*/2", "1", "2", "5", "7", "12", "1-5", "2/7", "29", "31", "feb",
            "sun", "0",
        ];
        let mut parsed = 0;
        for round in 0..20_000 {
            let expr: String = if round % 2 == 0 {
                let len = rng.next() % 14;
                (0..len).map(|_| rng.pick(&ATOMS)).collect()
            } else {
                let fields = 5 + rng.next() % 2;
                let field = |rng: &mut XorShift| {
                    let items = 1 + rng.next() % 2;
                    (0..items)
                        .map(|_| rng.pick(&PIECES))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                (0..fields)
                    .map(|_| field(&mut rng))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            if let Ok(schedule) = Schedule::parse(&expr, "Europe/Amsterdam") {
                parsed += 1;
                for t in instants {
                    if let Some(next) = schedule.next_after(t) {
                        assert!(next > t, "{expr:?}");
                    }
                }
            } else {
                let message = Schedule::parse(&expr, "UTC").unwrap_err().to_string();
                assert!(!message.ends_with('.'), "{message}");
                assert!(!message.starts_with(char::is_uppercase), "{message}");
            }
        }
        assert!(
            parsed > 1_000,
            "the fuzz should also produce some valid expressions"
        );
    }

    /// Whether wall time `wall` matches, straight from the field bits.
    fn matches_wall(f: &Fields, wall: NaiveDateTime) -> bool {
        let dom = f.dom.has(wall.day());
        let dow = f.dow.has(wall.weekday().num_days_from_sunday());
        let day = if f.dom_star || f.dow_star {
            dom && dow
        } else {
            dom || dow
        };
        day && f.second.has(wall.second())
            && f.minute.has(wall.minute())
            && f.hour.has(wall.hour())
            && f.month.has(wall.month())
    }

    /// Whether instant `t` is an occurrence by the rules of the module doc, worked out
    /// minute by minute with no search at all.
    fn is_occurrence(f: &Fields, tz: Tz, t: DateTime<Utc>) -> bool {
        let wall = t.with_timezone(&tz).naive_local();
        if matches_wall(f, wall) {
            match tz.from_local_datetime(&wall) {
                LocalResult::Ambiguous(a, b) if f.fixed_time() => {
                    return t == a.min(b).with_timezone(&Utc);
                }
                _ => return true,
            }
        }
        // The first instant after a gap stands in for the fixed times the gap swallowed.
        let before = (t - TimeDelta::seconds(1)).with_timezone(&tz).naive_local();
        let mut skipped = before + TimeDelta::seconds(60 - i64::from(before.second()));
        while f.fixed_time() && skipped < wall {
            if matches_wall(f, skipped) {
                return true;
            }
            skipped += TimeDelta::minutes(1);
        }
        false
    }

    #[test]
    fn agrees_with_brute_force_across_transitions() {
        let minutes = [
            "*", "*/15", "0", "30", "0,30", "10-40/10", "5/20", "45", "*/7",
        ];
        let hours = ["*", "*/2", "2", "1,2,3", "1-3", "0-23/3", "2/5", "0", "1"];
        let doms = ["*", "*", "*/2", "1", "13", "1-7", "31", "25-31"];
        let months = ["*", "*", "3", "10,11", "*/2", "mar-apr"];
        let dows = ["*", "*", "0", "5", "1-5", "*/2", "sun"];
        let windows = [
            ("Europe/Amsterdam", "2026-03-28T20:00:00Z"),
            ("Europe/Amsterdam", "2026-10-24T20:00:00Z"),
            ("America/New_York", "2026-03-08T00:00:00Z"),
            ("America/New_York", "2026-10-31T20:00:00Z"),
            // Half-hour shifts: 02:00 becomes 02:30 in October, 02:00 repeats from 01:30 in April.
            ("Australia/Lord_Howe", "2026-04-04T10:00:00Z"),
            ("Australia/Lord_Howe", "2026-10-03T10:00:00Z"),
            // Midnight shifts: 24:00 goes back to 23:00 in April, 00:00 skips to 01:00 in September.
            ("America/Santiago", "2026-04-04T20:00:00Z"),
            ("America/Santiago", "2026-09-05T20:00:00Z"),
        ];
        let mut rng = XorShift(0x0dd_ba11);
        let chosen = [
            "30 2 * * *",
            "30 1 * * *",
            "0 0 * * *",
            "30 23 * * *",
            "0 * * * *",
        ];
        let chosen = chosen
            .into_iter()
            .map(str::to_owned)
            .chain(["*/15 * * * *", "0,30 1-3 * * *"].map(str::to_owned));
        let random = (0..8).map(|_| {
            [&minutes[..], &hours, &doms, &months, &dows]
                .map(|choices| rng.pick(choices))
                .join(" ")
        });
        for expr in chosen.chain(random.collect::<Vec<_>>()) {
            let fields = parse_fields(&expr).unwrap();
            for (zone, start) in windows {
                let tz: Tz = zone.parse().unwrap();
                let schedule = Schedule::parse(&expr, zone).unwrap();
                let start = at(start);
                let span = 26 * 60;
                let horizon = start + TimeDelta::minutes(span + 2 * 24 * 60);
                let truth: Vec<DateTime<Utc>> = (0..=span + 2 * 24 * 60)
                    .map(|m| start + TimeDelta::minutes(m))
                    .filter(|t| is_occurrence(&fields, tz, *t))
                    .collect();
                // Every minute, and half of them off the minute, so "now" lands everywhere.
                for m in 0..span {
                    let t = start + TimeDelta::minutes(m) + TimeDelta::seconds(m % 2 * 29);
                    let got = schedule.next_after(t);
                    match truth.iter().find(|o| **o > t) {
                        Some(want) => assert_eq!(got.as_ref(), Some(want), "{expr} {zone} {t}"),
                        None => assert!(got.is_none_or(|g| g > horizon), "{expr} {zone} {t}"),
                    }
                }
            }
        }
    }
}

//! Schedule fields: the text of one cron expression read into a set of values per field,
//! with the errors that name the bad field. Nothing here knows about time zones or clocks;
//! `mod.rs` turns the result into a pattern to search and into the DST class of the job.

use super::ScheduleError;

pub(super) const MACROS: [(&str, &str); 7] = [
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

/// The values one field selects, as bits.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FieldSet {
    bits: u64,
}

impl FieldSet {
    pub(super) fn has(self, value: u32) -> bool {
        value < 64 && self.bits & (1 << value) != 0
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Fields {
    pub(super) second: FieldSet,
    pub(super) minute: FieldSet,
    pub(super) hour: FieldSet,
    pub(super) dom: FieldSet,
    pub(super) month: FieldSet,
    pub(super) dow: FieldSet,
    /// The day fields start with `*`, which makes them unrestricted for the OR rule.
    pub(super) dom_star: bool,
    pub(super) dow_star: bool,
    /// The seconds, minute or hour field starts with `*` (cronie's `MIN_STAR`/`HR_STAR`,
    /// with seconds read like minutes): the job follows elapsed time across DST.
    pub(super) time_star: bool,
}

pub(super) fn parse_fields(expr: &str) -> Result<Fields, ScheduleError> {
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
        time_star: [second, rest[0], rest[1]]
            .iter()
            .any(|f| f.starts_with('*')),
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
        let (first, last, step) = parse_item(field, item)?;
        for value in (first..=last).step_by(step as usize) {
            set.bits |= 1 << value;
        }
    }
    if field == Field::DayOfWeek && set.has(7) {
        set.bits = (set.bits | 1) & !(1 << 7);
    }
    Ok(set)
}

/// One list element: `(first, last, step)`.
fn parse_item(field: Field, item: &str) -> Result<(u32, u32, u32), String> {
    let (min, last, _) = field.bounds();
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(field, step)?)),
        None => (item, None),
    };
    if range == "*" {
        return Ok((min, last, step.unwrap_or(1)));
    }
    if range.is_empty() {
        return Err(format!(
            "missing start before \"/\" in \"{item}\" (write \"*/n\")"
        ));
    }
    let (first, end) = match range.split_once('-') {
        Some((a, b)) => {
            let (first, end) = (parse_value(field, a, item)?, parse_value(field, b, item)?);
            sunday_end(field, range, first, end, step.is_some())?
        }
        // `a/n` is read as `a-<last>/n`; a lone value is itself.
        None => {
            let value = parse_value(field, range, item)?;
            (value, step.map_or(value, |_| last.max(value)))
        }
    };
    Ok((first, end, step.unwrap_or(1)))
}

/// The end of the range `first-end`, with cron's one exception to "ranges run forwards": a
/// day-of-week range that ends on Sunday written `0` or `sun` ends on 7 (`fri-sun` is 5-7).
///
/// Cronie applies that rewrite in every field and only to a range without a step, so it
/// reads hour `5-0` as 5-7 and day-of-week `5-0/2` as no day at all. Both are refused here
/// instead, since neither can be what was meant.
fn sunday_end(
    field: Field,
    range: &str,
    first: u32,
    end: u32,
    stepped: bool,
) -> Result<(u32, u32), String> {
    if first <= end {
        return Ok((first, end));
    }
    if field == Field::DayOfWeek && end == 0 {
        if stepped {
            return Err(format!(
                "range \"{range}\" with a step matches no day in cron; write the Sunday as 7, as in \"{first}-7/2\""
            ));
        }
        return Ok((first, 7));
    }
    Err(format!(
        "range \"{range}\" runs backwards; split a wrap-around in two, as in \"22-23,0-2\""
    ))
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
    pub(super) fn canonical(&self) -> String {
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

    /// Fixed-time in the DST sense of the module doc: no time field starts with `*`.
    pub(super) fn fixed_time(&self) -> bool {
        !self.time_star
    }

    /// True when no day can ever match, so that a search would only run into croner's
    /// year limit. Only day-of-month alone can do that: a restricted day-of-week ORed in
    /// matches every week, and ANDed with an existing date it matches within a few years.
    pub(super) fn never_matches(&self) -> bool {
        const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        if self.dom_star || !self.dow_star {
            return false;
        }
        !(1..=12u32)
            .any(|m| self.month.has(m) && (1..=LONGEST[m as usize - 1]).any(|d| self.dom.has(d)))
    }
}

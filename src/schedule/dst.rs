//! Time zones: the IANA zone a schedule is read in, looked up in the host's tz database, and
//! the mapping between wall times and instants that the daylight-saving rules need.
//!
//! Zones come from the host's tz database (`$TZDIR`, else `/usr/share/zoneinfo`), the one
//! cron and PostgreSQL read, so a `tzdata` update reaches the guardian without a rebuild. A
//! copy of the database compiled into the binary (jiff's bundled tzdb) answers only for a
//! zone the host lacks entirely, or on a host with no database at all; `database()` says
//! which is in use, for the guardian's start-up log. The lookup and the offsets are jiff's;
//! the rest of the crate speaks chrono, so the conversion happens here and nowhere else.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeDelta, Utc};
use std::path::PathBuf;
use std::sync::OnceLock;

use jiff::Timestamp;
use jiff::civil;
use jiff::tz::{AmbiguousOffset, TimeZone, TimeZoneDatabase};

use super::ScheduleError;

/// An IANA time zone, with its name as it was asked for.
#[derive(Clone, Debug)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

/// The instants a wall time stands for, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Local {
    Single(DateTime<Utc>),
    /// Fall back: the wall time happens twice (earlier, later).
    Twice(DateTime<Utc>, DateTime<Utc>),
    /// Spring forward: the wall time never happens.
    Gap,
}

/// The tz database zones are looked up in, and how to describe it.
struct Database {
    /// The host's, when it has one.
    host: Option<TimeZoneDatabase>,
    description: String,
}

fn db() -> &'static Database {
    static DB: OnceLock<Database> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = std::env::var_os("TZDIR")
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from("/usr/share/zoneinfo"), PathBuf::from);
        match TimeZoneDatabase::from_dir(&dir) {
            Ok(host) if !host.is_definitively_empty() => Database {
                host: Some(host),
                description: format!("{} (the host's; the built-in copy only for zones it lacks)", dir.display()),
            },
            _ => Database {
                host: None,
                description: format!(
                    "no tz database at {}: using the copy built into sisy; install tzdata (or set TZDIR) to follow rule changes",
                    dir.display()
                ),
            },
        }
    })
}

/// Which tz database zones come from, for the start-up log: the host directory, or the
/// copy compiled into the binary when the host has none.
pub fn database() -> &'static str {
    &db().description
}

impl Zone {
    /// Looks a zone up in the host's database, then in the built-in copy.
    pub fn get(name: &str) -> Result<Zone, ScheduleError> {
        let unknown = || {
            ScheduleError::new(format!(
                "unknown time zone \"{name}\": use an IANA name such as \"Europe/Amsterdam\" or \"UTC\""
            ))
        };
        // jiff also reads POSIX TZ strings and paths; only plain IANA names are zones here.
        if name.is_empty() || name.starts_with(['/', '.']) || name.contains("..") {
            return Err(unknown());
        }
        let host = db().host.as_ref().and_then(|h| h.get(name).ok());
        let tz = match host {
            Some(tz) => tz,
            None => TimeZoneDatabase::bundled()
                .get(name)
                .map_err(|_| unknown())?,
        };
        Ok(Zone {
            name: name.to_owned(),
            tz,
        })
    }

    /// The name the zone was asked for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offset from UTC at `t`, in seconds.
    pub fn offset_at(&self, t: DateTime<Utc>) -> Option<i32> {
        let ts = Timestamp::from_second(t.timestamp()).ok()?;
        Some(self.tz.to_offset(ts).seconds())
    }

    /// `t` on the zone's clock, for display.
    pub fn at(&self, t: DateTime<Utc>) -> Option<DateTime<FixedOffset>> {
        Some(t.with_timezone(&FixedOffset::east_opt(self.offset_at(t)?)?))
    }

    /// The zone's abbreviation at `t` (`CET`, `EDT`), or the offset when it has none.
    pub fn abbreviation_at(&self, t: DateTime<Utc>) -> String {
        match Timestamp::from_second(t.timestamp()) {
            Ok(ts) => self.tz.to_offset_info(ts).abbreviation().to_owned(),
            Err(_) => String::new(),
        }
    }

    /// The wall clock at `t`; None outside the years jiff knows (-9999..=9999).
    pub fn wall_of(&self, t: DateTime<Utc>) -> Option<NaiveDateTime> {
        let offset = self.offset_at(t)?;
        t.naive_utc()
            .checked_add_signed(TimeDelta::seconds(offset.into()))
    }

    /// The instants the wall time `wall` stands for; None outside jiff's range.
    pub(super) fn local(&self, wall: NaiveDateTime) -> Option<Local> {
        let civil = to_civil(wall)?;
        let at = |offset: jiff::tz::Offset| {
            wall.checked_sub_signed(TimeDelta::seconds(offset.seconds().into()))
                .map(|t| t.and_utc())
        };
        Some(match self.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => Local::Single(at(offset)?),
            AmbiguousOffset::Fold { before, after } => {
                let (a, b) = (at(before)?, at(after)?);
                if a <= b {
                    Local::Twice(a, b)
                } else {
                    Local::Twice(b, a)
                }
            }
            AmbiguousOffset::Gap { .. } => Local::Gap,
        })
    }
}

fn to_civil(wall: NaiveDateTime) -> Option<civil::DateTime> {
    use chrono::{Datelike as _, Timelike as _};
    let year = i16::try_from(wall.year()).ok()?;
    civil::DateTime::new(
        year,
        wall.month() as i8,
        wall.day() as i8,
        wall.hour() as i8,
        wall.minute() as i8,
        wall.second() as i8,
        0,
    )
    .ok()
}

/// Binary search for the first whole second in `(lo, hi]` where `pred` holds, given that it
/// does not hold at `lo` and does at `hi`; None when those ends are not as promised.
pub(super) fn first_instant(
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

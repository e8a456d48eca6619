//! Fuzz target for the schedule parser: `Schedule::parse` on any text, then `next_after` a
//! few times from fixed instants chosen around daylight-saving changes and the ends of
//! chrono's range.
//!
//! The input is `EXPR` or `EXPR\nZONE`: with a zone line the expression is read in that zone
//! only; without one it is read in each of a few zones with unusual clocks. Beyond "does not
//! panic" it checks the contract of `next_after`: each occurrence is strictly after the
//! instant it was asked about, and asking again from one second before it gives it again
//! (no occurrence is passed over).

#![no_main]

use chrono::{DateTime, TimeDelta};
use libfuzzer_sys::fuzz_target;
use sisyphus::schedule::Schedule;

/// Zones whose clocks break the usual assumptions: a 30-minute DST shift (Lord Howe), a
/// skipped calendar day (Apia, 2011-12-30), a 2-hour shift (Troll), negative DST (Dublin),
/// and a 45-minute offset (Chatham).
const ZONES: [&str; 6] = [
    "UTC",
    "Europe/Amsterdam",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Antarctica/Troll",
    "Europe/Dublin",
];

/// Unix seconds to start from: just before Amsterdam's spring forward and inside its fall
/// back (2026), just before Apia's skipped day, Lord Howe's fall back (2026-04-05), and the
/// ends of the range (year 1 and year 9999).
const STARTS: [i64; 7] = [
    1_774_745_999,
    1_792_888_200,
    1_325_152_800,
    1_775_313_000,
    0,
    -62_135_596_800,
    253_402_300_799,
];

/// How many occurrences to follow from each start.
const STEPS: usize = 4;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match text.split_once('\n') {
        Some((expr, zone)) => check(expr, zone),
        None => ZONES.iter().for_each(|zone| check(&text, zone)),
    }
});

fn check(expr: &str, zone: &str) {
    let Ok(schedule) = Schedule::parse(expr, zone) else {
        return;
    };
    assert_eq!(schedule.expr(), expr);
    for start in STARTS {
        let mut t = DateTime::from_timestamp(start, 0).expect("start in range");
        for _ in 0..STEPS {
            let Some(next) = schedule.next_after(t) else {
                break;
            };
            assert!(next > t, "{expr:?} in {zone}: {next} is not after {t}");
            let just_before = next - TimeDelta::seconds(1);
            assert_eq!(
                schedule.next_after(just_before),
                Some(next),
                "{expr:?} in {zone}: from {just_before} (after {t})"
            );
            t = next;
        }
    }
}

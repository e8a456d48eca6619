//! DST tests: the expected instants written out by hand from cron's rule, in zones that
//! move by an hour (Amsterdam, New York), by half an hour (Lord Howe) and at midnight
//! (Santiago), and a brute-force cross-check across transitions.

use super::super::dst::Local;
use super::super::fields::{Fields, parse_fields};
use super::super::*;
use super::{XorShift, at, seq};
use chrono::{Datelike as _, Timelike as _};

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
fn is_occurrence(f: &Fields, tz: &Zone, t: DateTime<Utc>) -> bool {
    let wall = tz.wall_of(t).unwrap();
    if matches_wall(f, wall) {
        match tz.local(wall).unwrap() {
            Local::Twice(earlier, _) if f.fixed_time() => return t == earlier,
            _ => return true,
        }
    }
    // The first instant after a gap stands in for the fixed times the gap swallowed.
    let before = tz.wall_of(t - TimeDelta::seconds(1)).unwrap();
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
            let tz = Zone::get(zone).unwrap();
            let schedule = Schedule::parse(&expr, zone).unwrap();
            let start = at(start);
            let span = 26 * 60;
            let horizon = start + TimeDelta::minutes(span + 2 * 24 * 60);
            let truth: Vec<DateTime<Utc>> = (0..=span + 2 * 24 * 60)
                .map(|m| start + TimeDelta::minutes(m))
                .filter(|t| is_occurrence(&fields, &tz, *t))
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

/// Hour steps and lists that do not start with `*` are fixed times (cronie's rule): the
/// skipped 02:30 runs once right after the gap, the repeated one runs once. Amsterdam,
/// 2026-03-29 02:00 CET -> 03:00 CEST at 01:00Z; 2026-10-25 03:00 CEST -> 02:00 CET at 01:00Z.
#[test]
fn amsterdam_lists_and_steps_are_fixed_times() {
    let tz = "Europe/Amsterdam";
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "30 0-6/2 * * *",
            "2026-03-28T23:00:00Z",
            &[
                "2026-03-28T23:30:00Z", // 00:30 CET
                "2026-03-29T01:00:00Z", // 02:30 skipped: 03:00 CEST
                "2026-03-29T02:30:00Z", // 04:30 CEST
                "2026-03-29T04:30:00Z", // 06:30 CEST
            ],
        ),
        (
            "30 0-6/2 * * *",
            "2026-10-24T21:00:00Z",
            &[
                "2026-10-24T22:30:00Z", // 00:30 CEST
                "2026-10-25T00:30:00Z", // 02:30 CEST, not again at 02:30 CET
                "2026-10-25T03:30:00Z", // 04:30 CET
                "2026-10-25T05:30:00Z", // 06:30 CET
            ],
        ),
        (
            "5,*/30 2 * * *",
            "2026-03-28T23:00:00Z",
            &[
                "2026-03-29T01:00:00Z", // 02:00, 02:05, 02:30 skipped: one run at 03:00 CEST
                "2026-03-30T00:00:00Z", // 02:00 CEST
                "2026-03-30T00:05:00Z",
                "2026-03-30T00:30:00Z",
            ],
        ),
        (
            "5,*/30 2 * * *",
            "2026-10-24T21:00:00Z",
            &[
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T00:05:00Z", // 02:05 CEST
                "2026-10-25T00:30:00Z", // 02:30 CEST, nothing in the CET pass
                "2026-10-26T01:00:00Z", // 02:00 CET next day
            ],
        ),
        // Starting with `*`: elapsed time, so the gap skips and the fold runs twice.
        (
            "0 */2 * * *",
            "2026-03-28T22:30:00Z",
            &[
                "2026-03-28T23:00:00Z", // 00:00 CET
                "2026-03-29T02:00:00Z", // 02:00 never happens: 04:00 CEST
                "2026-03-29T04:00:00Z",
            ],
        ),
        (
            "*/30 2 * * *",
            "2026-10-24T21:00:00Z",
            &[
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T01:30:00Z",
                "2026-10-26T01:00:00Z",
            ],
        ),
    ];
    for (expr, from, want) in cases {
        assert_eq!(seq(expr, tz, from, want.len()), want, "{expr} from {from}");
    }
}

/// New York: 2026-03-08 02:00 EST -> 03:00 EDT at 07:00Z; 2026-11-01 02:00 EDT -> 01:00 EST
/// at 06:00Z.
#[test]
fn new_york_lists_and_steps_are_fixed_times() {
    let tz = "America/New_York";
    assert_eq!(
        seq("30 0-6/2 * * *", tz, "2026-03-08T04:00:00Z", 3),
        [
            "2026-03-08T05:30:00Z", // 00:30 EST
            "2026-03-08T07:00:00Z", // 02:30 skipped: 03:00 EDT
            "2026-03-08T08:30:00Z", // 04:30 EDT
        ]
    );
    assert_eq!(
        seq("30 1-3/2 * * *", tz, "2026-11-01T04:00:00Z", 2),
        [
            "2026-11-01T05:30:00Z", // 01:30 EDT only
            "2026-11-01T08:30:00Z", // 03:30 EST
        ]
    );
}

/// Lord Howe moves by 30 minutes: 2026-04-05 02:00 (+11) -> 01:30 (+10:30) at 15:00Z on the
/// 4th; 2026-10-04 02:00 (+10:30) -> 02:30 (+11) at 15:30Z on the 3rd.
#[test]
fn lord_howe_half_hour_shift() {
    let tz = "Australia/Lord_Howe";
    assert_eq!(
        seq("45 1 * * *", tz, "2026-04-04T13:00:00Z", 2),
        [
            "2026-04-04T14:45:00Z", // 01:45 +11 only
            "2026-04-05T15:15:00Z", // 01:45 +10:30 next day
        ]
    );
    assert_eq!(
        seq("*/20 1 * * *", tz, "2026-04-04T13:00:00Z", 5),
        [
            "2026-04-04T14:00:00Z", // 01:00 +11
            "2026-04-04T14:20:00Z",
            "2026-04-04T14:40:00Z",
            "2026-04-04T15:10:00Z", // 01:40 again, +10:30
            "2026-04-05T14:30:00Z", // 01:00 +10:30 next day
        ]
    );
    assert_eq!(
        seq("15 2 * * *", tz, "2026-10-03T12:00:00Z", 2),
        [
            "2026-10-03T15:30:00Z", // 02:15 skipped: 02:30 +11
            "2026-10-04T15:15:00Z", // 02:15 +11 next day
        ]
    );
}

/// Santiago changes at midnight: 2026-04-05 00:00 (-03) -> 2026-04-04 23:00 (-04) at 03:00Z;
/// 2026-09-06 00:00 (-04) -> 01:00 (-03) at 04:00Z.
#[test]
fn santiago_midnight_shift() {
    let tz = "America/Santiago";
    assert_eq!(
        seq("30 23 * * *", tz, "2026-04-04T12:00:00Z", 2),
        [
            "2026-04-05T02:30:00Z", // 23:30 -03 only
            "2026-04-06T03:30:00Z", // 23:30 -04 next day
        ]
    );
    assert_eq!(
        seq("0 0 * * *", tz, "2026-09-05T12:00:00Z", 2),
        [
            "2026-09-06T04:00:00Z", // midnight skipped: 01:00 -03
            "2026-09-07T03:00:00Z", // 00:00 -03
        ]
    );
}

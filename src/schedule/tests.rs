//! Unit tests of schedules: syntax errors, the day rule, DST in several zones with the
//! expected instants written out by hand, and a brute-force cross-check across transitions.

use super::fields::MACROS;
use super::*;
use chrono::{Datelike as _, Timelike as _};

pub(super) fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// The next `n` occurrences after `from`, as RFC 3339 UTC strings.
pub(super) fn seq(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
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
    assert_eq!(s.timezone().name(), "America/New_York");
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
    // This thread's CPU time, not the wall clock: a loaded machine stretches the latter.
    let start = thread_cpu();
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
    let spent = thread_cpu() - start;
    assert!(spent < std::time::Duration::from_millis(100), "{spent:?}");
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
fn classification_follows_cronie() {
    let fixed = |expr: &str| parse_fields(expr).unwrap().fixed_time();
    assert!(fixed("30 2 * * *"));
    assert!(fixed("0,30 1-3 * * *"));
    assert!(fixed("0-59/15 2 * * *"));
    assert!(fixed("@daily"));
    assert!(!fixed("@hourly"));
    assert!(!fixed("* 2 * * *"));
    assert!(!fixed("0 */2 * * *"));
    assert!(!fixed("*/30 2 * * *"));
    assert!(!fixed("*/10 30 2 * * *"));
    // Only the first character counts: a step or a `*` later in the list does not.
    assert!(fixed("0 1-23/2 * * *"));
    assert!(fixed("30 0-6/2 * * *"));
    assert!(fixed("5,*/30 2 * * *"));
    assert!(fixed("0 2/3 * * *"));
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
        "*", "*", "*/5", "*/2", "1", "2", "5", "7", "12", "1-5", "2/7", "29", "31", "feb", "sun",
        "0",
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

/// Day-of-week ranges ending on Sunday, as cronie reads them (a range ending in 0 ends in 7),
/// from Tuesday 2026-12-01.
#[test]
fn sunday_ranges() {
    let from = "2026-12-01T00:00:00Z";
    let cases: [(&str, [&str; 4]); 9] = [
        ("fri-sun", ["12-04", "12-05", "12-06", "12-11"]),
        ("5-0", ["12-04", "12-05", "12-06", "12-11"]),
        ("5-7", ["12-04", "12-05", "12-06", "12-11"]),
        ("sat-sun", ["12-05", "12-06", "12-12", "12-13"]),
        ("7-0", ["12-06", "12-13", "12-20", "12-27"]),
        ("7", ["12-06", "12-13", "12-20", "12-27"]),
        ("sun-sat", ["12-02", "12-03", "12-04", "12-05"]),
        ("0-6", ["12-02", "12-03", "12-04", "12-05"]),
        // Sunday, Tuesday, Thursday, Saturday.
        ("*/2", ["12-03", "12-05", "12-06", "12-08"]),
    ];
    for (dow, days) in cases {
        let want: Vec<String> = days.iter().map(|d| format!("2026-{d}T00:00:00Z")).collect();
        assert_eq!(
            seq(&format!("0 0 * * {dow}"), "UTC", from, 4),
            want,
            "{dow}"
        );
    }
    assert_eq!(
        seq("0 0 * * mon,fri-sun", "UTC", from, 4),
        [
            "2026-12-04T00:00:00Z",
            "2026-12-05T00:00:00Z",
            "2026-12-06T00:00:00Z",
            "2026-12-07T00:00:00Z"
        ]
    );
    assert_eq!(
        seq("0 0 * * 5-7/2", "UTC", from, 2),
        ["2026-12-04T00:00:00Z", "2026-12-06T00:00:00Z"]
    );
    // Cronie would read these as no day at all and as hours 5-7: refused instead.
    assert_eq!(
        err("0 0 * * 5-0/2"),
        "day-of-week field \"5-0/2\": range \"5-0\" with a step matches no day in cron; write the Sunday as 7, as in \"5-7/2\""
    );
    assert_eq!(
        err("0 5-0 * * *"),
        "hour field \"5-0\": range \"5-0\" runs backwards; split a wrap-around in two, as in \"22-23,0-2\""
    );
    assert_eq!(
        err("0 0 * * sat-fri"),
        "day-of-week field \"sat-fri\": range \"sat-fri\" runs backwards; split a wrap-around in two, as in \"22-23,0-2\""
    );
}

/// Zones come from the host's tz database when it has one, and PostgreSQL-style names
/// that are not IANA zones (POSIX rules, paths) are refused.
#[test]
fn zones_come_from_the_host_database() {
    if std::path::Path::new("/usr/share/zoneinfo/UTC").exists()
        && std::env::var_os("TZDIR").is_none()
    {
        assert!(database().contains("/usr/share/zoneinfo"), "{}", database());
    }
    for name in ["/etc/passwd", "../UTC", "EST5EDT,M3.2.0,M11.1.0", ""] {
        assert!(Zone::get(name).is_err(), "{name}");
    }
    assert!(Zone::get("Europe/Amsterdam").is_ok());
}

mod dst;

/// The CPU time this thread has used.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(ok, 0);
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn a_schedule_is_described_in_words() {
    for (expr, words) in [
        ("0 3 * * *", "03:00"),
        ("*/15 * * * *", "every 15 minutes"),
        // Cron's rule (§3): both days restrict, and either matches.
        ("0 0 1,15 * 1", "or Monday"),
        ("@daily", "00:00"),
        ("0 9 * * MON-FRI", "Monday"),
    ] {
        let said = Schedule::parse(expr, "UTC").unwrap().describe();
        assert!(said.contains(words), "{expr}: {said}");
    }
}

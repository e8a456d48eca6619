//! Schedules and time with the real binary: crontabs with cron's Sunday ranges import,
//! `sisy schedule check` shows cron's DST instants, and the guardian reads zones from the
//! host's tz database (`TZDIR`), falling back to its built-in copy, and says which at start.

use std::time::Duration;

use tokio_postgres::Client;

use crate::cli::ok;
use crate::util::{Guardian, migrated_db, sisy, wait_for, wait_until};

/// Waits until the guardian has given `job` its first `next_due`, and returns its
/// `schedule_error` (empty when none).
async fn scheduled(client: &Client, job: &str) -> String {
    wait_until(
        client,
        &format!("{job} to be scheduled or flagged"),
        Duration::from_secs(60),
        || {
            format!(
                "SELECT coalesce(schedule_error, CASE WHEN next_due IS NULL THEN '' ELSE 'ok' END)
                   FROM sisy.jobs WHERE name = '{job}'"
            )
        },
        |e: String| !e.is_empty(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_crontab_accepts_day_of_week_ranges_ending_on_sunday() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crontab");
    std::fs::write(
        &file,
        "0 0 * * fri-sun /usr/bin/weekend\n0 0 * * 5-0 /usr/bin/numeric\n30 8 * * sat-sun /usr/bin/lie-in\n",
    )
    .unwrap();
    let out = ok(&db, &["import-crontab", file.to_str().unwrap()]);
    assert!(out.contains("3 created"), "{out}");
    let schedules: Vec<String> = client
        .query("SELECT schedule FROM sisy.jobs ORDER BY schedule", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        schedules,
        ["0 0 * * 5-0", "0 0 * * fri-sun", "30 8 * * sat-sun"]
    );
}

#[test]
fn schedule_check_shows_cron_fixed_times_across_dst() {
    // 30 0-6/2 does not start with `*`: fixed times. Amsterdam springs forward at 01:00Z on
    // 2026-03-29, so 02:30 runs once at 03:00 CEST (01:00Z).
    let out = sisy()
        .args([
            "--json",
            "schedule",
            "check",
            "30 0-6/2 * * *",
            "--tz",
            "Europe/Amsterdam",
        ])
        .args(["--after", "2026-03-28T23:00:00Z", "--count", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let utc: Vec<&str> = v["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["utc"].as_str().unwrap())
        .collect();
    assert_eq!(
        utc,
        [
            "2026-03-28T23:30:00+00:00",
            "2026-03-29T01:00:00+00:00",
            "2026-03-29T02:30:00+00:00"
        ]
    );
    assert_eq!(v["next"][1]["local"], "2026-03-29T03:00:00+02:00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guardian_reads_the_host_tz_database_and_falls_back_to_its_own() {
    let (db, client) = migrated_db().await;
    // A host database with only UTC in it: that one is used, and a zone it lacks comes
    // from the built-in copy rather than being flagged.
    let tzdir = tempfile::tempdir().unwrap();
    std::fs::copy("/usr/share/zoneinfo/UTC", tzdir.path().join("UTC")).unwrap();
    let dir = tzdir.path().to_str().unwrap().to_owned();
    let g = Guardian::start_with_env(&db, "g1", "", &[("TZDIR", &dir)]);
    wait_for(
        "the tz database in the log",
        Duration::from_secs(60),
        || g.log().contains(&format!("{dir} (the host's")),
    )
    .await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, schedule, timezone) VALUES
               ('utc', 'true', '0 0 * * fri-sun', 'UTC'),
               ('ams', 'true', '30 0-6/2 * * *', 'Europe/Amsterdam')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(scheduled(&client, "utc").await, "ok");
    assert_eq!(scheduled(&client, "ams").await, "ok");
    drop(g);

    // No database at all on the host: the built-in copy, said so at start-up.
    let empty = tempfile::tempdir().unwrap();
    let none = empty.path().to_str().unwrap().to_owned();
    let g = Guardian::start_with_env(&db, "g2", "", &[("TZDIR", &none)]);
    wait_for(
        "the built-in tz database in the log",
        Duration::from_secs(60),
        || g.log().contains("using the copy built into sisy"),
    )
    .await;
}

/// PostgreSQL reads zone names without regard to case; so does the guardian, where a
/// name it does not know is flagged, never dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_names_postgres_accepts_are_scheduled_or_flagged() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, schedule, timezone) VALUES
               ('lower', 'true', '0 0 * * *', 'europe/amsterdam'),
               ('abbrev', 'true', '0 0 * * *', 'CEST')",
            &[],
        )
        .await
        .expect("PostgreSQL accepts both names");
    assert_eq!(scheduled(&client, "lower").await, "ok");
    let flagged = scheduled(&client, "abbrev").await;
    assert!(flagged.contains("unknown time zone \"CEST\""), "{flagged}");
}

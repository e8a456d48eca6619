//! `sisy import-crontab` with the real binary: a crontab is a source of jobs that a re-import
//! syncs (create, update, remove or suspend), `--dry-run` shows the difference, and nothing
//! else is ever taken over: jobs made by hand, or imported from another source, are refused.

use serde_json::Value;
use tokio_postgres::Client;

use crate::cli::{fails, json, ok, sisy_on};
use crate::util::{migrated_db, sisy};

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// (name, schedule, timezone, env A, suspended) of the jobs of `source`, by name.
async fn jobs_of(client: &Client, source: &str) -> Vec<(String, String, String, String, bool)> {
    client
        .query(
            "SELECT name, schedule, timezone, coalesce(env ->> 'A', ''), suspended FROM sisy.jobs
              WHERE source = $1 ORDER BY name",
            &[&source],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// The (action, name) pairs of a `--json` import report.
fn actions(report: &Value) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = report["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes in {report}"))
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap().to_string(),
                c["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_crontab_dry_runs_imports_once_and_refuses_reboot() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crontab");
    std::fs::write(
        &file,
        "# a user crontab\nMAILTO=ops@example.net\nCRON_TZ=Europe/Amsterdam\n*/5 * * * * /usr/bin/check\n0 3 * * 1 backup --full % now\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let dry = ok(&db, &["import-crontab", f, "--dry-run"]);
    assert!(
        dry.contains("2 to create, 0 to update, 0 to remove, 0 unchanged")
            && dry.contains("nothing written"),
        "{dry}"
    );
    assert_eq!(count(&client, "SELECT count(*) FROM sisy.jobs").await, 0);
    let first = ok(&db, &["import-crontab", f]);
    assert!(first.contains("2 created"), "{first}");
    let again = ok(&db, &["import-crontab", f]);
    assert!(
        again.contains("0 created, 0 updated, 0 removed, 2 unchanged"),
        "{again}"
    );
    let tz: String = client
        .query_one("SELECT DISTINCT timezone FROM sisy.jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tz, "Europe/Amsterdam");

    std::fs::write(&file, "@reboot /usr/bin/startup\n* * * * * true\n").unwrap();
    let r = sisy_on(&db, &["import-crontab", f]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("@reboot") && r.stderr.contains("nothing was imported"),
        "{}",
        r.stderr
    );
    assert_eq!(count(&client, "SELECT count(*) FROM sisy.jobs").await, 2);
}

/// An edited file, imported again: changed entries are updated in place (an entry whose
/// schedule changed keeps its job and history), entries gone from the file are removed (or
/// suspended), new ones created; the dry run shows exactly that and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimporting_an_edited_crontab_syncs_its_jobs() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crontab");
    let f = file.to_str().unwrap();
    let source = std::fs::canonicalize(file.parent().unwrap())
        .unwrap()
        .join("crontab")
        .display()
        .to_string();
    std::fs::write(
        &file,
        "CRON_TZ=Europe/Amsterdam\nA=1\n*/5 * * * * /usr/bin/check\n0 3 * * 1 backup --full\n15 4 * * * cleanup\n",
    )
    .unwrap();
    let first = json(&db, &["import-crontab", f]);
    assert_eq!(first["created"], 3, "{first}");
    assert_eq!(first["source"], source.as_str(), "{first}");
    let before = jobs_of(&client, &source).await;
    assert_eq!(before.len(), 3, "{before:?}");
    let backup_id: i64 = client
        .query_one(
            "SELECT id FROM sisy.jobs WHERE command = 'backup --full'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // Edited: A changes for every entry, backup moves to 04:00, cleanup goes, report comes.
    std::fs::write(
        &file,
        "CRON_TZ=Europe/Amsterdam\nA=2\n*/5 * * * * /usr/bin/check\n0 4 * * 1 backup --full\n30 1 * * * report\n",
    )
    .unwrap();
    let dry = json(&db, &["import-crontab", f, "--dry-run"]);
    let planned = actions(&dry);
    let kinds: Vec<&str> = planned.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(kinds, ["create", "remove", "update", "update"], "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert!(
        !dry.to_string().contains("\"A\":\"2\""),
        "env values printed: {dry}"
    );
    assert_eq!(jobs_of(&client, &source).await, before, "a dry run wrote");
    let human = ok(&db, &["import-crontab", f, "--dry-run"]);
    assert!(
        human.contains("1 to create, 2 to update, 1 to remove, 0 unchanged")
            && human.contains("schedule")
            && human.contains("cleanup"),
        "{human}"
    );

    let done = json(&db, &["import-crontab", f]);
    assert_eq!(
        (
            &done["created"],
            &done["updated"],
            &done["removed"],
            &done["unchanged"]
        ),
        (&1.into(), &2.into(), &1.into(), &0.into()),
        "{done}"
    );
    assert_eq!(
        actions(&done),
        planned,
        "the import did not do what the dry run said"
    );
    let after = jobs_of(&client, &source).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|j| j.3 == "2"), "{after:?}");
    let (schedule, id): (String, i64) = client
        .query_one(
            "SELECT schedule, id FROM sisy.jobs WHERE command = 'backup --full'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((schedule.as_str(), id), ("0 4 * * 1", backup_id));
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM sisy.jobs WHERE command = 'cleanup'"
        )
        .await,
        0
    );

    // Gone from the file with --suspend-removed: kept, suspended; a second time, unchanged.
    std::fs::write(
        &file,
        "CRON_TZ=Europe/Amsterdam\nA=2\n*/5 * * * * /usr/bin/check\n0 4 * * 1 backup --full\n",
    )
    .unwrap();
    let done = json(&db, &["import-crontab", f, "--suspend-removed"]);
    assert_eq!(done["suspended"], 1, "{done}");
    let again = json(&db, &["import-crontab", f, "--suspend-removed"]);
    assert_eq!(
        (&again["suspended"], &again["unchanged"]),
        (&0.into(), &3.into()),
        "{again}"
    );
    let report: bool = client
        .query_one(
            "SELECT suspended FROM sisy.jobs WHERE command = 'report'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(report);
}

/// `--tz`, one file under two sources, and the jobs an import must never take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_keep_to_their_source_and_refuse_to_take_over_other_jobs() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web");
    let f = file.to_str().unwrap();
    // With a user, the import has nothing to note on stderr.
    let import = |more: &[&'static str]| -> Vec<&str> {
        let mut args = vec!["import-crontab", f, "--run-as", "www"];
        args.extend_from_slice(more);
        args
    };
    std::fs::write(&file, "0 2 * * * /usr/bin/rotate\n").unwrap();
    let out = ok(
        &db,
        &import(&["--tz", "America/New_York", "--source", "web01"]),
    );
    assert!(out.contains("1 created"), "{out}");
    assert_eq!(jobs_of(&client, "web01").await[0].2, "America/New_York");
    fails(
        &db,
        &import(&["--tz", "Mars/Olympus", "--source", "web01"]),
        1,
        &["--tz", "Mars/Olympus"],
    );

    // The same file under another source (and prefix): its own jobs, the first untouched.
    let out = ok(
        &db,
        &import(&["--source", "web02", "--name-prefix", "web02"]),
    );
    assert!(out.contains("1 created"), "{out}");
    assert_eq!(jobs_of(&client, "web01").await.len(), 1);
    assert_eq!(jobs_of(&client, "web02").await.len(), 1);
    // Under another source with names that collide with web01's: refused, nothing written.
    let err = fails(
        &db,
        &import(&["--tz", "America/New_York", "--source", "web03"]),
        1,
        &[
            "imported from 'web01'",
            "--name-prefix",
            "nothing was imported",
        ],
    );
    assert!(err.contains("cron-web-"), "{err}");
    assert_eq!(jobs_of(&client, "web03").await.len(), 0);

    // A job made by hand under a name an import wants is not taken over.
    let hand = dir.path().join("hand");
    std::fs::write(&hand, "* * * * * /bin/true\n").unwrap();
    let h = hand.to_str().unwrap();
    let plan = json(
        &db,
        &[
            "import-crontab",
            h,
            "--run-as",
            "www",
            "--tz",
            "UTC",
            "--dry-run",
        ],
    );
    let name = actions(&plan)[0].1.clone();
    ok(&db, &["jobs", "add", &name, "--command", "mine"]);
    fails(
        &db,
        &["import-crontab", h, "--run-as", "www", "--tz", "UTC"],
        1,
        &[&format!("'{name}'"), "not imported", "nothing was imported"],
    );
    let command: String = client
        .query_one("SELECT command FROM sisy.jobs WHERE name = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    assert_eq!(command, "mine");
    // Unless asked to adopt jobs that carry no source (imported before sources were kept).
    let out = ok(
        &db,
        &[
            "import-crontab",
            h,
            "--run-as",
            "www",
            "--tz",
            "UTC",
            "--adopt",
        ],
    );
    assert!(out.contains("1 updated"), "{out}");
}

/// Imports at once, of one file: one at a time, so each sees the others' jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_imports_of_one_source_do_not_duplicate() {
    let (db, client) = migrated_db().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("busy");
    let entries: String = (0..40).map(|i| format!("{i} * * * * job {i}\n")).collect();
    std::fs::write(&file, entries).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            sisy()
                .args(["--database-url", &db.url, "import-crontab"])
                .arg(&file)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(count(&client, "SELECT count(*) FROM sisy.jobs").await, 40);
}

/// `--dry-run` only reads: a `sisy_reader` login may run it (no advisory lock, no row locks,
/// no env values, which that role cannot read: env is compared by variable names), and an
/// admin's dry run does not wait behind an import in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_only_reads_so_a_reader_may_run_it_and_it_waits_for_no_import() {
    let (db, client) = migrated_db().await;
    let roles = sisy()
        .args(["--database-url", &db.url, "db", "roles"])
        .output()
        .unwrap();
    assert!(
        roles.status.success(),
        "{}",
        String::from_utf8_lossy(&roles.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crontab");
    let f = file.to_str().unwrap();
    std::fs::write(
        &file,
        "FOO=s3cret\n*/5 * * * * /usr/bin/check\n0 3 * * * backup\n",
    )
    .unwrap();
    assert!(ok(&db, &["import-crontab", f]).contains("2 created"));
    std::fs::write(
        &file,
        "FOO=s3cret\nBAR=x\n*/5 * * * * /usr/bin/check\n15 4 * * * report\n",
    )
    .unwrap();
    let source = std::fs::canonicalize(&file).unwrap();
    let source = source.to_str().unwrap();
    let before = jobs_of(&client, source).await;
    assert_eq!(before.len(), 2);
    let (reader_url, _reader) = crate::security::login_as(&db, &client, "sisy_reader").await;
    let dry_run = |url: &str| {
        sisy()
            .args(["--database-url", url, "import-crontab", f, "--dry-run"])
            .output()
            .unwrap()
    };
    let out = dry_run(&reader_url);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the reader's dry run failed: {stderr}"
    );
    assert!(
        stdout.contains("1 to create, 1 to update, 1 to remove, 0 unchanged"),
        "{stdout}"
    );
    assert!(stderr.contains("by their names only"), "{stderr}");
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"));
    // An import in progress (it holds the import lock and its jobs' rows): an admin's dry
    // run reads past it.
    let mut holder = db.connect().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(6001419621394894932); SELECT id FROM sisy.jobs FOR UPDATE",
    )
    .await
    .unwrap();
    let mut child = sisy()
        .args(["--database-url", &db.url, "import-crontab", f, "--dry-run"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the dry run waits for the import in progress");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{stdout}");
    // The same difference for the admin, who reads the env values.
    assert!(
        stdout.contains("1 to create, 1 to update, 1 to remove, 0 unchanged"),
        "{stdout}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(jobs_of(&client, source).await, before, "a dry run wrote");
    let env: Vec<String> = client
        .query("SELECT env::text FROM sisy.jobs ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(env, [r#"{"FOO": "s3cret"}"#; 2], "a dry run wrote");
}

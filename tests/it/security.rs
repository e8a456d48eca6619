//! Least privilege in the database: each role logs in for real and every denial is proved,
//! and a guardian running as `sisy_guardian` does its whole job.

use std::time::Duration;

use tokio_postgres::NoTls;

use crate::pg::TestDb;
use crate::util::{Guardian, migrated_db, sisy, wait_finished, wait_until};

/// Creates a log-in role that is a member of `group`, and connects as it; returns its URL.
pub(crate) async fn login_as(
    db: &TestDb,
    admin: &tokio_postgres::Client,
    group: &str,
) -> (String, tokio_postgres::Client) {
    let role = format!("{}_{}", group, db.name);
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN IN ROLE {group}"))
        .await
        .unwrap();
    let url = db.url.replace("user=postgres", &format!("user={role}"));
    assert_ne!(url, db.url, "the test URL names user=postgres");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(async move { drop(connection.await) });
    (url, client)
}

async fn denied(client: &tokio_postgres::Client, sql: &str) {
    let err = client
        .batch_execute(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("allowed: {sql}"));
    let message = sisyphus::db::error_message(&err);
    assert!(message.contains("permission denied"), "{sql}: {message}");
}

async fn allowed(client: &tokio_postgres::Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", sisyphus::db::error_message(&e)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_can_do_its_job_and_nothing_more() {
    let (db, owner) = migrated_db().await;
    let out = sisy()
        .args(["--database-url", &db.url, "db", "roles"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    owner
        .batch_execute(
            "INSERT INTO sisy.jobs (name, command, env) VALUES ('secretive', 'echo ok', '{\"TOKEN\": \"s3cret\"}');
             SELECT sisy.trigger('secretive');",
        )
        .await
        .unwrap();

    let (_, reader) = login_as(&db, &owner, "sisy_reader").await;
    allowed(&reader, "SELECT * FROM sisy.runs; SELECT * FROM sisy.hosts; SELECT * FROM sisy.job_status;
                      SELECT name, command, schedule FROM sisy.jobs; SELECT * FROM sisy.recent_failures").await;
    denied(&reader, "SELECT env FROM sisy.jobs").await;
    denied(&reader, "SELECT * FROM sisy.jobs").await;
    denied(
        &reader,
        "INSERT INTO sisy.jobs (name, command) VALUES ('x', 'true')",
    )
    .await;
    denied(&reader, "UPDATE sisy.runs SET state = 'succeeded'").await;
    denied(&reader, "DELETE FROM sisy.hosts").await;
    denied(&reader, "SELECT sisy.trigger('secretive')").await;
    denied(&reader, "SELECT sisy.kill(1)").await;

    let (_, admin) = login_as(&db, &owner, "sisy_admin").await;
    allowed(&admin, "INSERT INTO sisy.jobs (name, command) VALUES ('by-admin', 'true');
                     UPDATE sisy.jobs SET command = 'true 2' WHERE name = 'by-admin';
                     SELECT env FROM sisy.jobs; SELECT sisy.kill(sisy.trigger('by-admin')); SELECT sisy.suspend('by-admin');
                     DELETE FROM sisy.jobs WHERE name = 'by-admin'").await;
    denied(&admin, "UPDATE sisy.runs SET state = 'succeeded'").await;
    denied(&admin, "INSERT INTO sisy.runs (job_name, pool, scheduled_for, reason, due_at, deadline) VALUES ('x', 'default', now(), 'manual', now(), now())").await;
    denied(&admin, "DELETE FROM sisy.hosts").await;

    let (guardian_url, guardian) = login_as(&db, &owner, "sisy_guardian").await;
    allowed(
        &guardian,
        "UPDATE sisy.jobs SET next_due = NULL, schedule_error = NULL WHERE false",
    )
    .await;
    for column in [
        "command = 'rm -rf /'",
        "run_as = 'root'",
        "env = '{}'",
        "pool = 'other'",
        "suspended = true",
    ] {
        denied(&guardian, &format!("UPDATE sisy.jobs SET {column}")).await;
    }
    denied(&guardian, "DELETE FROM sisy.jobs").await;
    denied(
        &guardian,
        "INSERT INTO sisy.jobs (name, command) VALUES ('x', 'true')",
    )
    .await;
    denied(&guardian, "SELECT sisy.trigger('secretive')").await;

    // A guardian logged in as sisy_guardian runs the whole core path.
    let mut g = Guardian::start(
        &TestDb {
            name: db.name.clone(),
            url: guardian_url,
        },
        "g-least",
        "",
    );
    owner
        .execute("INSERT INTO sisy.jobs (name, command, schedule) VALUES ('ticking', 'echo $TOKEN', '* * * * * *')", &[])
        .await
        .unwrap();
    wait_until(&owner, "runs by the least-privileged guardian", Duration::from_secs(30), || {
        "SELECT count(*) FROM sisy.runs WHERE host = 'g-least' AND state = 'succeeded' AND job_name = 'ticking'".into()
    }, |n: i64| n >= 2)
    .await;
    let first: i64 = owner
        .query_one(
            "SELECT min(id) FROM sisy.runs WHERE job_name = 'secretive'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        wait_finished(&owner, first, Duration::from_secs(30)).await,
        "succeeded"
    );
    assert_eq!(g.stop(), Some(0), "{}", g.log());
    assert!(!g.log().contains("permission denied"), "{}", g.log());
}

#[test]
fn a_guardian_refuses_a_config_file_others_can_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("guardian.toml");
    std::fs::write(&config, "database_url = \"host=/nonexistent dbname=x\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = sisy()
        .args(["guardian", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("writable by every user") && err.contains("chmod o-w"),
        "{err}"
    );
}

/// A root guardian refuses a config file another user owns (that user could edit it), and
/// one in a directory others may write to (they could swap the file).
#[test]
fn a_root_guardian_refuses_a_config_file_another_user_could_change() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root"
    );
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let check = |config: &std::path::Path| {
        let out = sisy()
            .args(["guardian", "--check-config", "--config"])
            .arg(config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let text = "database_url = \"host=/nonexistent dbname=x\"\n";

    let dir = tempfile::tempdir().unwrap();
    let owned = dir.path().join("owned.toml");
    std::fs::write(&owned, text).unwrap();
    nix::unistd::chown(&owned, Some(nobody.uid), None).unwrap();
    let (code, err) = check(&owned);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is owned by nobody") && err.contains("chown root"),
        "{err}"
    );
    nix::unistd::chown(&owned, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    let (code, err) = check(&owned);
    assert_eq!(code, Some(0), "a root-owned config is fine: {err}");

    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let swappable = open_dir.join("guardian.toml");
    std::fs::write(&swappable, text).unwrap();
    let (code, err) = check(&swappable);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&open_dir.display().to_string())
            && err.contains("writable by every user")
            && err.contains("chmod o-w"),
        "{err}"
    );
    // The sticky bit lets others add files but not replace root's: that is fine (/tmp).
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, err) = check(&swappable);
    assert_eq!(code, Some(0), "{err}");

    let their_dir = dir.path().join("theirs");
    std::fs::create_dir(&their_dir).unwrap();
    nix::unistd::chown(&their_dir, Some(nobody.uid), None).unwrap();
    let in_theirs = their_dir.join("guardian.toml");
    std::fs::write(&in_theirs, text).unwrap();
    let (code, err) = check(&in_theirs);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&their_dir.display().to_string()) && err.contains("owned by nobody"),
        "{err}"
    );
}

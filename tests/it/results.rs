//! Results between jobs (SPEC §7): the `SISY_RESULT` file a job may write, stored in
//! `sisy.runs.result` by kind (JSON, text, missing, too big, what jsonb refuses); the same
//! file in the hands of a hostile job (a symbolic or hard link to a secret, a FIFO, a
//! directory, renaming its own directory) that must never make the root guardian read
//! another file or hang; a result that waits out a database outage and a guardian restart
//! in the spool; and `SISY_INPUTS` / `SISY_FLOW_RUN_ID` for the member of a flow, which its
//! job's `env` cannot fake. Real guardians, real jobs run as `nobody`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::util::{
    Guardian, Proxy, migrated_db, shared_dir, trigger, until_file, wait_finished, wait_for,
    wait_started, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

/// A run's state, result, error and output.
async fn ended(client: &Client, id: i64) -> (String, Option<Value>, Option<String>, String) {
    let row = client
        .query_one(
            "SELECT state, result, error, coalesce(output, '') FROM sisy.runs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Inserts one job per (name, command) and triggers each; returns the run ids in order.
async fn run_all(client: &Client, jobs: &[(&str, String)]) -> Vec<i64> {
    let mut ids = Vec::new();
    for (name, command) in jobs {
        client
            .execute(
                "INSERT INTO sisy.jobs (name, command) VALUES ($1, $2)",
                &[name, command],
            )
            .await
            .unwrap();
        ids.push(trigger(client, name).await);
    }
    for id in &ids {
        wait_finished(client, *id, LONG).await;
    }
    ids
}

/// A shell pipeline that writes `n` bytes of `c`.
fn bytes(n: usize, c: char) -> String {
    format!("head -c {n} /dev/zero | tr '\\0' '{c}'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_stored_by_kind_and_a_result_over_64_kib_fails_the_run() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    let jobs = [
        (
            "json",
            r#"echo '{"rows": 3, "files": ["a", "b"]}' > "$SISY_RESULT""#.to_string(),
        ),
        ("text", r#"echo 'hello world' > "$SISY_RESULT""#.to_string()),
        ("missing", "true".to_string()),
        ("empty", r#": > "$SISY_RESULT""#.to_string()),
        (
            "failed",
            r#"echo '{"partial": true}' > "$SISY_RESULT"; exit 3"#.to_string(),
        ),
        // jsonb refuses \u0000 in a string; the finish statement must not fail on it.
        (
            "nul",
            r#"printf '%s' '{"s": "a\u0000b"}' > "$SISY_RESULT""#.to_string(),
        ),
        (
            "deep",
            format!(
                r#"{{ {}; {}; }} > "$SISY_RESULT""#,
                bytes(5000, '['),
                bytes(5000, ']')
            ),
        ),
        (
            "at-limit",
            format!(
                r#"{{ printf '"'; {}; printf '"'; }} > "$SISY_RESULT""#,
                bytes(65534, 'x')
            ),
        ),
        (
            "too-big",
            format!(r#"{} > "$SISY_RESULT""#, bytes(70000, 'x')),
        ),
        // Numbers keep their digits (an id beyond 2^64, a long decimal); one jsonb cannot
        // hold makes the text a string rather than fail the run's finishing write.
        (
            "digits",
            r#"echo '{"id": 123456789012345678901234567890, "x": 0.1000000000000000055511151231257827}' > "$SISY_RESULT""#.to_string(),
        ),
        (
            "tiny",
            r#"echo '{"x": 1e-20000}' > "$SISY_RESULT""#.to_string(),
        ),
    ];
    let ids = run_all(&client, &jobs).await;
    let got = |i: usize| ended(&client, ids[i]);

    let digits = ids[jobs.len() - 2];
    wait_finished(&client, digits, LONG).await;
    let text: String = client
        .query_one(
            "SELECT result::text FROM sisy.runs WHERE id = $1",
            &[&digits],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        text,
        r#"{"x": 0.1000000000000000055511151231257827, "id": 123456789012345678901234567890}"#
    );
    let tiny = ids[jobs.len() - 1];
    assert_eq!(wait_finished(&client, tiny, LONG).await, "succeeded");
    let text: String = client
        .query_one(
            "SELECT result #>> '{}' FROM sisy.runs WHERE id = $1",
            &[&tiny],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(text.trim(), r#"{"x": 1e-20000}"#);

    let (state, result, error, _) = got(0).await;
    assert_eq!((state.as_str(), error), ("succeeded", None));
    assert_eq!(result, Some(json!({"rows": 3, "files": ["a", "b"]})));

    let (state, result, error, _) = got(1).await;
    assert_eq!(state, "succeeded");
    assert_eq!(result, Some(json!("hello world")));
    let error = error.unwrap_or_default();
    assert!(
        error.contains("SISY_RESULT was not JSON") && error.contains("JSON string"),
        "{error}"
    );

    for (i, what) in [(2, "missing"), (3, "empty")] {
        let (state, result, error, _) = got(i).await;
        assert_eq!(
            (state.as_str(), result, error),
            ("succeeded", None, None),
            "{what}"
        );
    }

    let (state, result, error, _) = got(4).await;
    assert_eq!(state, "failed");
    assert_eq!(result, Some(json!({"partial": true})));
    assert_eq!(error.as_deref(), Some("exited with code 3"));

    let (state, result, error, _) = got(5).await;
    assert_eq!(state, "succeeded", "{}", g.log());
    assert_eq!(result, Some(json!(r#"{"s": "a\u0000b"}"#)));
    let error = error.unwrap_or_default();
    assert!(
        error.contains("\\u0000") && error.contains("JSON string"),
        "{error}"
    );

    let (state, result, error, _) = got(6).await;
    assert_eq!(state, "succeeded", "{}", g.log());
    assert_eq!(
        result.as_ref().and_then(Value::as_str).map(str::len),
        Some(10_000)
    );
    assert!(error.unwrap_or_default().contains("JSON string"));

    let (state, result, error, _) = got(7).await;
    assert_eq!((state.as_str(), error), ("succeeded", None));
    assert_eq!(result, Some(json!("x".repeat(65534))));

    let (state, result, error, _) = got(8).await;
    assert_eq!((state.as_str(), result), ("failed", None));
    let error = error.unwrap_or_default();
    assert!(
        error.contains("64 KiB") && error.contains("70000 bytes"),
        "{error}"
    );
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_result_file_never_makes_the_guardian_read_another_file_nor_hang() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root"
    );
    // A secret only root may read, on the file system of the result directories (/tmp), so
    // that a hard link to it is possible (made by the test: the kernel's protected_hardlinks
    // stops `nobody` from making one itself, not every host has it on).
    let vault = tempfile::Builder::new()
        .prefix("sisy-vault-")
        .tempdir()
        .unwrap();
    let secret = vault.path().join("secret");
    std::fs::write(&secret, "{\"password\": \"hunter2\"}").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let shared = shared_dir();
    let (path_file, flag) = (shared.path().join("path"), shared.path().join("go"));

    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    let jobs = [
        ("symlink", format!(r#"ln -s {} "$SISY_RESULT"; echo "$SISY_RESULT""#, secret.display())),
        ("shadow", r#"ln -s /etc/shadow "$SISY_RESULT"; echo "$SISY_RESULT""#.to_string()),
        ("fifo", r#"mkfifo "$SISY_RESULT"; echo "$SISY_RESULT""#.to_string()),
        ("directory", r#"mkdir "$SISY_RESULT"; echo "$SISY_RESULT""#.to_string()),
        (
            "rename",
            r#"d=$(dirname "$SISY_RESULT"); mv "$d" "$d.x" 2>/dev/null && echo MOVED; rm -rf "$d" 2>/dev/null; echo '{"ok": 1}' > "$SISY_RESULT"; echo "$SISY_RESULT""#
                .to_string(),
        ),
    ];
    let ids = run_all(&client, &jobs).await;
    for (i, (name, _)) in jobs.iter().enumerate() {
        let (state, result, error, output) = ended(&client, ids[i]).await;
        assert_eq!(state, "succeeded", "{name}: {error:?}\n{}", g.log());
        let path = PathBuf::from(output.lines().last().unwrap_or_default());
        assert!(path.is_absolute(), "{name}: {output}");
        // Nothing the job left stays: its directory is removed or, emptied, kept for the
        // next run of the same user.
        let dir = path.parent().unwrap();
        assert!(
            std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none()),
            "{name}: what the job left in {dir:?} stays"
        );
        if *name == "rename" {
            assert!(
                !output.contains("MOVED"),
                "the job moved its result directory"
            );
            assert_eq!(result, Some(json!({"ok": 1})));
            continue;
        }
        assert_eq!(result, None, "{name}");
        let error = error.unwrap_or_default();
        assert!(
            error.contains("SISY_RESULT") && error.contains("not a regular file"),
            "{name}: {error}"
        );
    }

    // A hard link to the secret, in place of the result, once the job has written its own.
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('hardlink', $1)",
            &[&format!(
                r#"echo '"mine"' > "$SISY_RESULT"; echo "$SISY_RESULT" > {}; {}"#,
                path_file.display(),
                until_file(&flag)
            )],
        )
        .await
        .unwrap();
    let id = trigger(&client, "hardlink").await;
    wait_for("the job to say where its result goes", LONG, || {
        std::fs::read_to_string(&path_file).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let result_path = PathBuf::from(std::fs::read_to_string(&path_file).unwrap().trim());
    std::fs::remove_file(&result_path).unwrap();
    std::fs::hard_link(&secret, &result_path).unwrap();
    std::fs::write(&flag, "").unwrap();
    assert_eq!(wait_finished(&client, id, LONG).await, "succeeded");
    let (_, result, error, _) = ended(&client, id).await;
    assert_eq!(result, None);
    let error = error.unwrap_or_default();
    assert!(
        error.contains("SISY_RESULT") && error.contains("owned by"),
        "{error}"
    );
    // The guardian serves on.
    let after = run_all(&client, &[("after", r#"echo 1 > "$SISY_RESULT""#.into())]).await;
    assert_eq!(ended(&client, after[0]).await.1, Some(json!(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_directories_left_by_a_killed_guardian_are_removed_at_its_next_start() {
    let shared = shared_dir();
    let path_file = shared.path().join("path");
    let (db, client) = migrated_db().await;
    let mut g = Guardian::start(&db, "g1", "");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('long', $1)",
            &[&format!(
                r#"echo "$SISY_RESULT" > {}; sleep 600"#,
                path_file.display()
            )],
        )
        .await
        .unwrap();
    let id = trigger(&client, "long").await;
    wait_started(&client, id).await;
    wait_for("the job to say where its result goes", LONG, || {
        std::fs::read_to_string(&path_file).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let result_path = PathBuf::from(std::fs::read_to_string(&path_file).unwrap().trim());
    let room = result_path
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let meta = std::fs::symlink_metadata(&room).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o711, "{room:?}");
    g.kill();
    assert!(room.exists());
    g.restart();
    wait_for("the leftover result directories to go", LONG, || {
        !room.exists()
    })
    .await;
    wait_finished(&client, id, LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_waits_out_a_database_outage_and_a_guardian_restart_in_the_spool() {
    let (db, client) = migrated_db().await;
    let proxy = Proxy::start(crate::pg::server());
    let shared = shared_dir();
    let flag = shared.path().join("go");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('kept', $1)",
            &[&format!(
                r#"{}; echo '{{"n": 7}}' > "$SISY_RESULT""#,
                until_file(&flag)
            )],
        )
        .await
        .unwrap();
    let mut g = Guardian::start(&proxy.db(&db), "g1", "");
    let id = trigger(&client, "kept").await;
    wait_started(&client, id).await;
    proxy.cut();
    std::fs::write(&flag, "").unwrap();
    let spooled = g.dir.path().join(format!("spool/{id}.json"));
    wait_for("the result in the spool", LONG, || spooled.exists()).await;
    let entry: Value = serde_json::from_slice(&std::fs::read(&spooled).unwrap()).unwrap();
    assert!(entry["result"].is_string(), "{entry}");
    g.restart();
    proxy.heal();
    assert_eq!(
        wait_finished(&client, id, LONG).await,
        "succeeded",
        "{}",
        g.log()
    );
    assert_eq!(ended(&client, id).await.1, Some(json!({"n": 7})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_member_gets_its_upstreams_results_and_flow_run_and_its_env_cannot_fake_them() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    let fake = json!({"SISY_INPUTS": "{\"root\": \"forged\"}", "SISY_FLOW_RUN_ID": "0", "SISY_RESULT": "/etc/passwd"});
    let show = r#"printf '%s|%s|%s' "$SISY_INPUTS" "${SISY_FLOW_RUN_ID-unset}" "$SISY_RESULT""#;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, env) VALUES
                ('root', $1, '{}'), ('member', $2, $3), ('alone', $2, $3)",
            &[&r#"echo '{"rows": 3}' > "$SISY_RESULT""#, &show, &fake],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO sisy.dependencies (job, upstream) VALUES ('member', 'root')",
            &[],
        )
        .await
        .unwrap();
    let root = trigger(&client, "root").await;
    assert_eq!(wait_finished(&client, root, LONG).await, "succeeded");
    let member: i64 = wait_until(
        &client,
        "the member's run",
        LONG,
        || "SELECT coalesce(max(id), 0) FROM sisy.runs WHERE job_name = 'member'".into(),
        |id: i64| id > 0,
    )
    .await;
    assert_eq!(
        wait_finished(&client, member, LONG).await,
        "succeeded",
        "{}",
        g.log()
    );
    let flow_run_id: i64 = client
        .query_one(
            "SELECT flow_run_id FROM sisy.runs WHERE id = $1",
            &[&member],
        )
        .await
        .unwrap()
        .get(0);
    let (_, _, _, output) = ended(&client, member).await;
    let parts: Vec<&str> = output.split('|').collect();
    assert_eq!(parts.len(), 3, "{output}");
    let inputs: Value = serde_json::from_str(parts[0]).unwrap();
    assert_eq!(inputs, json!({"root": {"rows": 3}}), "{output}");
    assert_eq!(parts[1], flow_run_id.to_string());
    assert_ne!(parts[2], "/etc/passwd");

    // Outside a flow neither variable is set, whatever the job's env says.
    let alone = trigger(&client, "alone").await;
    assert_eq!(wait_finished(&client, alone, LONG).await, "succeeded");
    let (_, _, _, output) = ended(&client, alone).await;
    let parts: Vec<&str> = output.split('|').collect();
    assert_eq!(&parts[..2], &["", "unset"], "{output}");
    assert_ne!(parts[2], "/etc/passwd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_nests_directories_20000_deep_beside_its_result_cannot_crash_the_guardian() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    // 20 × 1,000 levels: `mkdir -p` a chain of 1,000, then move the tree so far to its bottom
    // (each path stays under PATH_MAX). A removal that recurses once per level overflows the
    // 2 MiB stack of the thread that does it from about 12,000 levels (std's remove_dir_all
    // did). Building and removing it takes seconds: the deadline is a loaded machine's.
    let nest = r#"cd "$(dirname "$SISY_RESULT")" || exit 1
        chain=$(i=0; while [ $i -lt 1000 ]; do printf 'd/'; i=$((i+1)); done)
        mkdir -p "t/$chain" || exit 1
        i=1; while [ $i -lt 20 ]; do mkdir -p "n/$chain" && mv t "n/$chain" && mv n t || exit 1; i=$((i+1)); done
        echo '"deep"' > "$SISY_RESULT"; echo "$SISY_RESULT""#;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('nest', $1)",
            &[&nest],
        )
        .await
        .unwrap();
    let id = trigger(&client, "nest").await;
    let deadline = std::time::Instant::now() + 3 * LONG;
    // One read per look: two reads could see `pending`, then `running`, and stop early.
    while matches!(ended(&client, id).await.0.as_str(), "pending" | "running") {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never ended:\n{}",
            g.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (state, result, error, output) = ended(&client, id).await;
    assert_eq!(
        (state.as_str(), error),
        ("succeeded", None),
        "{output}\n{}",
        g.log()
    );
    assert_eq!(result, Some(json!("deep")));
    let dir = PathBuf::from(output.trim());
    let dir = dir.parent().unwrap();
    wait_for("the nested run directory to be removed", LONG, || {
        !dir.exists()
    })
    .await;
    let after = run_all(&client, &[("after", r#"echo 2 > "$SISY_RESULT""#.into())]).await;
    assert_eq!(
        ended(&client, after[0]).await.1,
        Some(json!(2)),
        "{}",
        g.log()
    );
    assert!(!g.log().contains("overflow"), "{}", g.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_inputs_exceed_what_exec_takes_is_refused_with_what_to_do() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    // Three upstream results of 50,000 bytes each: together more than Linux passes in one
    // variable (128 KiB), each well under the 64 KiB a result may hold.
    let write = format!(
        r#"{{ printf '"'; {}; printf '"'; }} > "$SISY_RESULT""#,
        bytes(50_000, 'x')
    );
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES
                ('start', 'true'), ('a', $1), ('b', $1), ('c', $1), ('join', 'true')",
            &[&write],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO sisy.dependencies (job, upstream) VALUES
                ('a', 'start'), ('b', 'start'), ('c', 'start'),
                ('join', 'a'), ('join', 'b'), ('join', 'c')",
            &[],
        )
        .await
        .unwrap();
    trigger(&client, "start").await;
    let join: i64 = wait_until(
        &client,
        "the join's run",
        LONG,
        || "SELECT coalesce(max(id), 0) FROM sisy.runs WHERE job_name = 'join'".into(),
        |id: i64| id > 0,
    )
    .await;
    assert_eq!(
        wait_finished(&client, join, LONG).await,
        "failed",
        "{}",
        g.log()
    );
    let error = ended(&client, join).await.2.unwrap_or_default();
    assert!(
        error.contains("SISY_INPUTS (the results of this run's upstream jobs)")
            && error.contains("put the paths in their results"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_directory_serves_again_only_as_it_was_made() {
    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "");
    let look = r#"d=$(dirname "$SISY_RESULT"); echo "$d"; stat -c %a "$d"; ls -A "$d""#;
    let messy = r#"d=$(dirname "$SISY_RESULT"); echo 1 > "$SISY_RESULT"; touch "$d/left"; chmod 777 "$d"; echo "$d""#;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES ('look', $1), ('messy', $2)",
            &[&look, &messy],
        )
        .await
        .unwrap();
    let run = |name: &'static str| {
        let client = &client;
        async move {
            let id = trigger(client, name).await;
            wait_finished(client, id, LONG).await;
            let (state, _, error, output) = ended(client, id).await;
            assert_eq!(state, "succeeded", "{name}: {error:?}");
            output
        }
    };
    // One run after another of the same user: the directory a run left empty serves the
    // next, as the fresh one was (mode 0700, empty: the first run's result file is gone).
    let first = run("look").await;
    let dir = first.lines().next().unwrap().to_string();
    assert_eq!(first, format!("{dir}\n700\n"));
    let messed = run("messy").await;
    assert_eq!(
        messed,
        format!("{dir}\n"),
        "the emptied directory was not kept"
    );
    // A directory the job left something in, or opened to others, is not handed out again.
    let after = run("look").await;
    let again = after.lines().next().unwrap().to_string();
    assert_ne!(again, dir);
    assert_eq!(after, format!("{again}\n700\n"));
    assert!(!PathBuf::from(&dir).exists(), "{}", g.log());
}

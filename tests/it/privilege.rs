//! Nothing of a job row reaches a process that still runs as root: a job whose `env` asks
//! the dynamic loader to load a library (`LD_PRELOAD`, `LD_AUDIT`) gets it in its own
//! process, run as `nobody`, and never in the guardian or its run shim.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::{Guardian, migrated_db, shared_dir, trigger, wait_finished};

/// A shared library whose constructor appends the effective uid of whatever process loads
/// it to `note`, one line per load. `la_version` makes it usable as an `LD_AUDIT` module.
fn compile_spy(dir: &Path, note: &Path) -> PathBuf {
    let source = dir.join("spy.c");
    let library = dir.join("spy.so");
    std::fs::write(
        &source,
        format!(
            r#"#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void spy(void) {{
    char line[32];
    int fd = open("{note}", O_WRONLY | O_APPEND);
    if (fd < 0) return;
    snprintf(line, sizeof line, "%u\n", (unsigned) geteuid());
    (void) !write(fd, line, strlen(line));
    close(fd);
}}
unsigned int la_version(unsigned int version) {{ return version; }}
"#,
            note = note.display()
        ),
    )
    .unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .output()
        .expect("cc is needed for this test (.ci/run installs it)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    library
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_loader_variables_never_reach_a_root_process() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root: the guardian must switch to nobody"
    );
    let dir = shared_dir();
    // Made here and opened without O_CREAT by the library, so that any user may append
    // (fs.protected_regular refuses O_CREAT on others' files in a sticky directory).
    let note = dir.path().join("euids");
    std::fs::write(&note, "").unwrap();
    std::fs::set_permissions(&note, std::fs::Permissions::from_mode(0o666)).unwrap();
    let library = compile_spy(dir.path(), &note);

    let (db, client) = migrated_db().await;
    let g = Guardian::start(&db, "g1", "default_user = \"nobody\"");
    for variable in ["LD_PRELOAD", "LD_AUDIT"] {
        let name = variable.to_lowercase();
        let env = serde_json::json!({ variable: library.display().to_string() });
        client
            .execute(
                "INSERT INTO sisy.jobs (name, command, env) VALUES ($1, $2, $3)",
                &[&name, &format!("echo \"{variable}=${variable}\""), &env],
            )
            .await
            .unwrap();
        let id = trigger(&client, &name).await;
        assert_eq!(
            wait_finished(&client, id, Duration::from_secs(60)).await,
            "succeeded",
            "{}",
            g.log()
        );
        let output: String = client
            .query_one("SELECT output FROM sisy.runs WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        // The job itself gets its environment, variable and all.
        assert!(
            output.contains(&format!("{variable}={}", library.display())),
            "{variable}: {output}"
        );
        let euids = std::fs::read_to_string(&note).unwrap_or_default();
        let nobody = nix::unistd::User::from_name("nobody")
            .unwrap()
            .unwrap()
            .uid
            .to_string();
        // Never in a process running as anyone but the job's user (root above all) …
        assert!(
            euids.lines().all(|l| l == nobody),
            "{variable}: the job's library ran in a process with euid {:?}",
            euids.lines().find(|l| *l != nobody)
        );
        // … but it did load into the job: the test sees the effect it looks for.
        assert!(
            euids.lines().any(|l| l == nobody),
            "{variable}: the library never loaded into the job: {euids:?}"
        );
        std::fs::write(&note, "").unwrap();
    }
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

/// The run shim (root) shows none of the job's environment, neither in its own environment
/// nor on its command line; the job's shell has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_shim_holds_nothing_of_the_jobs_environment() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    let secret = "s3cret-4f1c9e";
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, env) VALUES ('quiet', 'sleep 60', $1)",
            &[&serde_json::json!({ "TOKEN": secret })],
        )
        .await
        .unwrap();
    let id = trigger(&client, "quiet").await;
    let shell = crate::util::wait_started(&client, id).await;
    let proc_file = |pid: i32, what: &str| {
        std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_else(|e| panic!("{pid}/{what}: {e}"))
    };
    let stat = String::from_utf8(proc_file(shell, "stat")).unwrap();
    let shim: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let shim_cmdline = String::from_utf8_lossy(&proc_file(shim, "cmdline")).into_owned();
    assert!(shim_cmdline.contains("__run-shim"), "{shim_cmdline}");
    assert!(
        !shim_cmdline.contains(secret) && !shim_cmdline.contains("sleep"),
        "{shim_cmdline}"
    );
    assert_eq!(
        proc_file(shim, "environ"),
        b"",
        "the shim's environment is not empty"
    );
    let shell_env = String::from_utf8_lossy(&proc_file(shell, "environ")).into_owned();
    assert!(
        shell_env.contains(&format!("TOKEN={secret}")),
        "{shell_env}"
    );
    client
        .execute("SELECT sisy.kill($1)", &[&id])
        .await
        .unwrap();
    wait_finished(&client, id, Duration::from_secs(60)).await;
}

/// The workdir is looked at only as the job's user: a job cannot learn, through the error
/// its run records, what exists where its user cannot look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workdir_is_judged_as_the_jobs_user_not_as_root() {
    let hidden = tempfile::tempdir().unwrap();
    // Root's, and nobody may not enter it.
    std::fs::set_permissions(hidden.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir(hidden.path().join("exists")).unwrap();
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    let mut errors = Vec::new();
    for name in ["exists", "missing"] {
        let workdir = hidden.path().join(name).display().to_string();
        client
            .execute(
                "INSERT INTO sisy.jobs (name, command, workdir) VALUES ($1, 'pwd', $2)",
                &[&name, &workdir],
            )
            .await
            .unwrap();
        let id = trigger(&client, name).await;
        assert_eq!(
            wait_finished(&client, id, Duration::from_secs(60)).await,
            "failed"
        );
        let error: String = client
            .query_one("SELECT error FROM sisy.runs WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        errors.push(error.replace(&workdir, "WORKDIR"));
    }
    assert_eq!(errors[0], errors[1], "the errors tell the two apart");
    assert!(
        errors[0].contains("workdir 'WORKDIR'") && errors[0].contains("user 'nobody'"),
        "{}",
        errors[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_holds_no_descriptor_but_its_stdin_stdout_and_stderr() {
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    let dir = crate::util::shared_dir();
    let flag = dir.path().join("go");
    // Two runs at once: neither may hold a descriptor of the other (nor of the guardian,
    // the spawner or the shim). Read from /proc while the shells wait: a listing the job
    // made itself would show the shell's own pipes.
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, overlap) VALUES ('waits', $1, 'allow')",
            &[&crate::util::until_file(&flag)],
        )
        .await
        .unwrap();
    let first = trigger(&client, "waits").await;
    let first_shell = crate::util::wait_started(&client, first).await;
    let second = trigger(&client, "waits").await;
    let second_shell = crate::util::wait_started(&client, second).await;
    for shell in [first_shell, second_shell] {
        assert_eq!(
            crate::util::descriptors_of(shell),
            vec![0, 1, 2],
            "shell {shell}"
        );
    }
    std::fs::write(&flag, "").unwrap();
    for id in [first, second] {
        let state = crate::util::wait_finished(&client, id, Duration::from_secs(60)).await;
        assert_eq!(state, "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_starts_with_no_signal_ignored_or_blocked() {
    // The shim blocks signals for its signalfd and ignores SIGPIPE (as every Rust program
    // does): none of that may reach the job, or `yes | head -1` would never see SIGPIPE.
    // The mask is read by the process the shell becomes (`exec`), which has the shell's
    // mask as the shim gave it: read by a child from `/proc/$$/status`, it could catch the
    // shell between blocking every signal and `sigsuspend` while it waits for that child.
    let (db, client) = migrated_db().await;
    let _g = Guardian::start(&db, "g1", "");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command) VALUES
               ('mask', 'exec grep -E ''^Sig(Blk|Ign)'' /proc/self/status'),
               ('pipe', 'yes | head -n 1')",
            &[],
        )
        .await
        .unwrap();
    let mask = trigger(&client, "mask").await;
    let pipe = trigger(&client, "pipe").await;
    for id in [mask, pipe] {
        let state = crate::util::wait_finished(&client, id, Duration::from_secs(60)).await;
        assert_eq!(state, "succeeded");
    }
    assert_eq!(
        crate::util::output_of(&client, mask).await,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
    // With SIGPIPE ignored, `yes` would get EPIPE and complain on stderr instead.
    assert_eq!(crate::util::output_of(&client, pipe).await, "y\n");
}

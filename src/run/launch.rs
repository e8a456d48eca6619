//! Turning a claimed run into what the supervisor starts: identity, working directory and
//! environment.
//!
//! Owns the cron-like environment (`HOME`, `USER`, `LOGNAME`, `SHELL`, `PATH`), the job's
//! `env` over it and the `SISY_*` variables over both (a job cannot fake its own run id, its
//! flow's inputs nor where its result goes): `SISY_RESULT` for every run (its directory made
//! here, see [`crate::run::result`]), `SISY_INPUTS` and `SISY_FLOW_RUN_ID` for a member of a
//! flow run only.
//! Every refusal is a sentence for the run's `error`, with whether a retry could help; an
//! environment `execve` would refuse is one, caught here rather than in the shim.
//! Does not start anything (supervisor) nor decide the user policy (users).

use std::sync::Arc;
use std::time::Duration;

use crate::run::ClaimedRun;
use crate::run::Spec;
use crate::run::result::Room;
use crate::run::users::Policy;

/// systemd's default PATH: what a job finds without setting its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a claimed run cannot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: String,
    /// True when trying again cannot help (an identity this host refuses or lacks); false when
    /// it may (a user database that did not answer in time).
    pub final_: bool,
}

/// Linux's limit on one argument of exec (MAX_ARG_STRLEN): `sh -c COMMAND` cannot pass more.
pub const MAX_COMMAND_BYTES: usize = 32 * 4096;

/// Builds the process spec for `run`, or says why it cannot start on this host. The user
/// lookup runs on a blocking thread, bounded (`Policy::resolve_bounded`); so does making the
/// run's result directory in `room`, which a refusal after it removes again.
pub async fn spec(
    run: &ClaimedRun,
    policy: &Policy,
    output_limit: usize,
    room: &Arc<Room>,
) -> Result<Spec, Refusal> {
    if let Some(error) = &run.defect {
        return Err(Refusal {
            error: error.clone(),
            final_: true,
        });
    }
    if run.command.len() >= MAX_COMMAND_BYTES {
        return Err(Refusal {
            error: format!(
                "the command is {} bytes, more than the {} bytes Linux allows for one argument: put it in a script and run that",
                run.command.len(),
                MAX_COMMAND_BYTES - 1
            ),
            final_: true,
        });
    }
    let identity = policy
        .resolve_bounded(run.run_as.as_deref())
        .await
        .map_err(|u| Refusal {
            error: u.error,
            final_: u.final_,
        })?;
    // Not looked at here: the guardian may be root, and the workdir is the job's to name.
    // The shim changes to it after the switch of user and words the failure.
    let workdir = run.workdir.clone().unwrap_or_else(|| identity.home.clone());
    let owner = identity.switch.as_ref().map(|s| (s.uid, s.gid));
    let result = room
        .prepare_off_runtime(owner)
        .await
        .map_err(|e| Refusal {
            error: format!(
                "cannot make the directory for the run's SISY_RESULT file in {} ({e}): make room there, or point TMPDIR of the guardian elsewhere",
                std::env::temp_dir().display()
            ),
            final_: false,
        })?;
    let built = environment(run, &identity, &result.path());
    let env = match built {
        Ok(env) => env,
        Err(error) => {
            result.discard();
            return Err(Refusal {
                error,
                final_: true,
            });
        }
    };
    Ok(Spec {
        run_id: run.id,
        job_name: run.job_name.clone(),
        command: run.command.clone(),
        env,
        identity,
        workdir,
        host: policy.host.clone(),
        max_runtime: run.max_runtime,
        kill_grace: run.kill_grace.max(Duration::from_millis(1)),
        output_limit,
        result,
    })
}

/// The run's environment (see the module doc), or why `execve` would refuse it.
fn environment(
    run: &ClaimedRun,
    identity: &crate::run::users::Identity,
    result_path: &std::path::Path,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), identity.home.clone()),
        ("USER".into(), identity.name.clone()),
        ("LOGNAME".into(), identity.name.clone()),
        ("SHELL".into(), "/bin/sh".into()),
        ("PATH".into(), DEFAULT_PATH.into()),
    ];
    for (key, value) in job_env(&run.env)? {
        set(&mut env, key, value);
    }
    set(&mut env, "SISY_JOB".into(), run.job_name.clone());
    set(&mut env, "SISY_RUN_ID".into(), run.id.to_string());
    set(
        &mut env,
        "SISY_SCHEDULED_FOR".into(),
        run.scheduled_for.to_rfc3339(),
    );
    set(&mut env, "SISY_ATTEMPT".into(), run.attempt.to_string());
    set(
        &mut env,
        "SISY_RESULT".into(),
        result_path.display().to_string(),
    );
    // Only the flow engine's word counts: outside a flow run, a job's env cannot pretend.
    env.retain(|(k, _)| {
        k != INPUTS && k != "SISY_FLOW_RUN_ID" && k != "SISY_ITEM" && k != "SISY_ITEM_INDEX"
    });
    if let Some(flow_run_id) = run.flow_run_id {
        let inputs = run.inputs.clone().unwrap_or_else(|| "{}".into());
        set(&mut env, INPUTS.into(), inputs);
        set(&mut env, "SISY_FLOW_RUN_ID".into(), flow_run_id.to_string());
    }
    // An item of a fan-out: the item as JSON, and its place in the list.
    if let (Some(item), Some(index)) = (&run.item, run.item_index) {
        set(&mut env, "SISY_ITEM".into(), item.clone());
        set(&mut env, "SISY_ITEM_INDEX".into(), index.to_string());
    }
    check_exec_size(&run.command, &env, arg_max())?;
    Ok(env)
}

/// The variable that carries a member's upstream results.
const INPUTS: &str = "SISY_INPUTS";

/// What `execve` accepts on this host for arguments and environment together: a quarter of
/// the stack limit, at least 128 KiB (glibc's `sysconf(_SC_ARG_MAX)` follows the kernel).
fn arg_max() -> usize {
    // SAFETY: sysconf with a constant name has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_ARG_MAX) } {
        n if n > 0 => n as usize,
        _ => MAX_COMMAND_BYTES,
    }
}

/// Refuses, with a sentence, an environment `execve` would refuse (E2BIG) when the shim
/// starts `/bin/sh -c -- COMMAND` with it: one variable longer than Linux allows for one
/// string, or everything together beyond `arg_max`. The guardian checks it here, once,
/// rather than letting the size travel to the shim.
fn check_exec_size(command: &str, env: &[(String, String)], arg_max: usize) -> Result<(), String> {
    let pointer = std::mem::size_of::<usize>();
    let mut total = ["/bin/sh", "-c", "--", command]
        .iter()
        .map(|a| a.len() + 1 + pointer)
        .sum::<usize>();
    for (key, value) in env {
        let bytes = key.len() + 1 + value.len();
        if bytes >= MAX_COMMAND_BYTES && key == INPUTS {
            return Err(too_large_inputs(
                bytes,
                MAX_COMMAND_BYTES - 1,
                "for one variable",
            ));
        }
        if bytes >= MAX_COMMAND_BYTES {
            return Err(format!(
                "the job's env variable {key} is {bytes} bytes, more than the {} bytes Linux allows for one variable: put the value in a file and pass its path",
                MAX_COMMAND_BYTES - 1
            ));
        }
        total += bytes + 1 + pointer;
    }
    if total > arg_max
        && let Some((_, inputs)) = env.iter().find(|(k, _)| k == INPUTS)
        && inputs.len() > arg_max / 2
    {
        return Err(too_large_inputs(
            INPUTS.len() + 1 + inputs.len(),
            arg_max,
            "for a process's command and environment together",
        ));
    }
    if total > arg_max {
        return Err(format!(
            "the job's command and env take {total} bytes, more than the {arg_max} bytes this host allows a process to start with: put large values in files"
        ));
    }
    Ok(())
}

/// The refusal of a member whose upstream results are too large to hand it in its environment:
/// a retry would see the same frozen inputs, so the upstreams must pass less.
fn too_large_inputs(bytes: usize, limit: usize, scope: &str) -> String {
    format!(
        "SISY_INPUTS (the results of this run's upstream jobs) is {bytes} bytes, more than the {limit} bytes Linux allows {scope}: have the upstream jobs write large data to files and put the paths in their results"
    )
}

fn set(env: &mut Vec<(String, String)>, key: String, value: String) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value));
}

/// The job's `env` object as variables: strings as they are, other JSON values as JSON text,
/// null meaning "unset".
fn job_env(value: &serde_json::Value) -> Result<Vec<(String, String)>, String> {
    let Some(map) = value.as_object() else {
        return Err("the job's env is not a JSON object".into());
    };
    let mut out = Vec::new();
    for (key, v) in map {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!(
                "the job's env has an invalid variable name {key:?}"
            ));
        }
        let text = match v {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if text.contains('\0') {
            return Err(format!("the job's env variable {key} contains a NUL byte"));
        }
        out.push((key.clone(), text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_env_takes_strings_and_json_and_skips_null() {
        let env = job_env(&json!({"A": "x", "B": 3, "C": null, "D": true})).unwrap();
        assert_eq!(
            env,
            vec![
                ("A".into(), "x".into()),
                ("B".into(), "3".into()),
                ("D".into(), "true".into())
            ]
        );
    }

    #[test]
    fn an_environment_exec_would_refuse_is_refused_with_a_sentence() {
        let env = |value: usize| vec![("BIG".to_string(), "x".repeat(value))];
        assert_eq!(check_exec_size("true", &env(1000), 1 << 21), Ok(()));
        let one = check_exec_size("true", &env(MAX_COMMAND_BYTES), 1 << 30).unwrap_err();
        assert!(
            one.contains("env variable BIG") && one.contains("put the value in a file"),
            "{one}"
        );
        let many: Vec<_> = (0..40)
            .map(|i| (format!("V{i}"), "x".repeat(100_000)))
            .collect();
        let all = check_exec_size("true", &many, 1 << 21).unwrap_err();
        assert!(all.contains("command and env take"), "{all}");
        assert!(check_exec_size(&"x".repeat(1 << 20), &[], 1 << 20).is_err());
    }

    #[test]
    fn inputs_too_large_for_exec_are_refused_with_what_to_do() {
        let inputs = |n: usize| vec![(INPUTS.to_string(), "x".repeat(n))];
        let one = check_exec_size("true", &inputs(MAX_COMMAND_BYTES), 1 << 30).unwrap_err();
        assert!(
            one.contains("SISY_INPUTS (the results of this run's upstream jobs)")
                && one.contains("put the paths in their results"),
            "{one}"
        );
        let all = check_exec_size("true", &inputs(125_000), 120_000).unwrap_err();
        assert!(
            all.contains("SISY_INPUTS") && all.contains("together"),
            "{all}"
        );
    }

    #[test]
    fn job_env_refuses_bad_names() {
        assert!(
            job_env(&json!({"A=B": "x"}))
                .unwrap_err()
                .contains("invalid variable name")
        );
        assert!(job_env(&json!(["x"])).is_err());
    }
}

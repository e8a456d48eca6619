//! Records of the job process groups this guardian runs, one small file per run under
//! `state_dir/groups/`, and the start-up sweep that kills what a previous guardian process
//! left behind.
//!
//! This is the last of three layers that keep job processes from living on unsupervised:
//!
//! ```text
//!   guardian dies (SIGKILL, crash)  -> its shims stop their jobs (see `shim`)
//!   a shim dies too (kill -9 of all) -> the shell dies with it (PDEATHSIG); its children
//!                                       are left to PID 1, still in the job's group
//!   next guardian start on the host  -> this sweep kills those groups, before the runs
//!                                       are marked lost and retried elsewhere
//! ```
//!
//! A record holds the boot id, the group id (the shell's pid), the shell's start time and
//! the run's mark: its `SISY_JOB`, `SISY_RUN_ID` and `SISY_SCHEDULED_FOR` variables, which
//! every job process inherits. The sweep kills the group when its leader still runs with the
//! recorded start time, and every process that carries the run's mark (a process that left
//! the group with `setsid`, or a group whose leader is gone). A recycled pid is never
//! mistaken for a job: it has another start time and another mark (run ids repeat across
//! databases, so the mark includes the job and the occurrence too).
//! Everything here reads /proc or writes files, so the guardian calls it on the blocking pool
//! (`record_off_runtime`, the sweep at start-up), never on an async worker; only dropping a
//! [`Record`] (one unlink) happens in place.
//! Does not own killing during normal operation (the shim does) nor the runs' states.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::run::proc;

/// The variables that mark a run's processes.
pub const MARK: [&str; 3] = ["SISY_JOB", "SISY_RUN_ID", "SISY_SCHEDULED_FOR"];

/// One record file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    boot: String,
    pgid: i32,
    start: u64,
    /// `KEY=value` for each variable of [`MARK`].
    mark: Vec<String>,
}

/// The directory of records.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

/// A live record; dropping it removes the file (the run's processes are gone).
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Registry {
    /// Opens (creating it when needed) `state_dir/groups`.
    pub fn open(state_dir: &Path) -> io::Result<Registry> {
        let dir = state_dir.join("groups");
        std::fs::DirBuilder::new().recursive(true).create(&dir)?;
        Ok(Registry { dir })
    }

    /// Records the process group of run `run_id`, whose shell is `pid` and whose
    /// environment is `env`. A failure to write is logged, not fatal: this layer is a
    /// backstop.
    pub fn record(&self, run_id: i64, pid: u32, env: &[(String, String)]) -> Option<Record> {
        let entry = Entry {
            boot: proc::boot_id(),
            pgid: pid as i32,
            start: proc::stat(pid as i32)?.start_time,
            mark: env
                .iter()
                .filter(|(k, _)| MARK.contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        };
        let path = self.dir.join(run_id.to_string());
        let written = serde_json::to_vec(&entry)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&path, json));
        match written {
            Ok(()) => Some(Record { path }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot record a job's process group");
                None
            }
        }
    }

    /// [`Registry::record`] on the blocking pool: reading /proc and writing the file must
    /// not hold up an async worker. Only the run's mark of `env` is handed over.
    pub async fn record_off_runtime(
        &self,
        run_id: i64,
        pid: u32,
        env: &[(String, String)],
    ) -> Option<Record> {
        let registry = self.clone();
        let mark: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| MARK.contains(&k.as_str()))
            .cloned()
            .collect();
        tokio::task::spawn_blocking(move || registry.record(run_id, pid, &mark))
            .await
            .ok()
            .flatten()
    }

    /// Kills the job processes a previous guardian process left behind and forgets every
    /// record; returns how many processes and groups were found alive. Called at start-up,
    /// before this process starts any job.
    pub fn sweep(&self) -> usize {
        let Ok(files) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let boot = proc::boot_id();
        let mut entries = Vec::new();
        for file in files.flatten() {
            if let Ok(entry) = std::fs::read(file.path())
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
                && entry.boot == boot
                && entry.mark.len() == MARK.len()
            {
                entries.push(entry);
            }
            let _ = std::fs::remove_file(file.path());
        }
        if entries.is_empty() {
            return 0;
        }
        let mut killed = 0;
        let mut groups = Vec::new();
        for e in &entries {
            if e.pgid > 1 && proc::stat(e.pgid).map(|s| s.start_time) == Some(e.start) {
                let _ = killpg(Pid::from_raw(e.pgid), Signal::SIGKILL);
                groups.push(e.pgid);
                killed += 1;
            }
        }
        let mut marked = Vec::new();
        for pid in proc::pids() {
            if let Some(env) = proc::environ(pid)
                && entries.iter().any(|e| carries(&env, &e.mark))
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                marked.push(pid);
                killed += 1;
            }
        }
        if killed > 0 {
            tracing::warn!(
                processes = killed,
                "killed job processes left behind by a previous guardian process"
            );
        }
        // Wait (a little) until they are gone, so that no retry starts next to them.
        let until = Instant::now() + Duration::from_secs(5);
        let alive = || {
            groups.iter().any(|g| !proc::group_members(*g).is_empty())
                || marked
                    .iter()
                    .any(|p| proc::stat(*p).is_some_and(|s| s.state != "Z"))
        };
        while alive() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        killed
    }
}

/// Whether the environment block `env` holds every `KEY=value` of `mark`.
fn carries(env: &[u8], mark: &[String]) -> bool {
    mark.iter()
        .all(|m| env.split(|b| *b == 0).any(|var| var == m.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_removed_with_its_guard_and_a_stale_one_by_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        let me = std::process::id();
        let env = vec![
            ("SISY_JOB".to_string(), "j".to_string()),
            ("SISY_RUN_ID".to_string(), "7".to_string()),
            (
                "SISY_SCHEDULED_FOR".to_string(),
                "2026-01-01T00:00:00+00:00".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let record = registry.record(7, me, &env).expect("recorded");
        let text = std::fs::read_to_string(dir.path().join("groups/7")).unwrap();
        assert!(
            text.contains("SISY_RUN_ID=7") && !text.contains("PATH"),
            "{text}"
        );
        drop(record);
        assert!(!dir.path().join("groups/7").exists());
        // A record whose start time does not match (a recycled pid) and whose mark no
        // process carries is forgotten, not acted on.
        let stale = Entry {
            boot: proc::boot_id(),
            pgid: me as i32,
            start: 1,
            mark: vec![
                "SISY_JOB=nobody-has-this".into(),
                "SISY_RUN_ID=-1".into(),
                "SISY_SCHEDULED_FOR=never".into(),
            ],
        };
        std::fs::write(
            dir.path().join("groups/8"),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        assert_eq!(registry.sweep(), 0);
        assert!(!dir.path().join("groups/8").exists());
    }

    #[test]
    fn a_mark_matches_whole_variables_only() {
        let env = b"SISY_JOB=j\0SISY_RUN_ID=17\0SISY_SCHEDULED_FOR=t\0";
        let mark = |id: &str| {
            vec![
                "SISY_JOB=j".to_string(),
                format!("SISY_RUN_ID={id}"),
                "SISY_SCHEDULED_FOR=t".to_string(),
            ]
        };
        assert!(carries(env, &mark("17")));
        assert!(!carries(env, &mark("1")));
    }
}

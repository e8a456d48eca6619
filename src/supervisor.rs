//! The supervisor: runs one admitted run as a subprocess and reports how it ended.
//!
//! Owns the process: `/bin/sh -c COMMAND` with stdin `/dev/null`, its own session and
//! process group, a clean cron-like environment plus the job's `env` and the `SISY_*`
//! variables, the `run_as` user with its supplementary groups, the working directory; the
//! combined stdout+stderr read to EOF into a bounded tail (a job printing 10 GB costs the
//! guardian `output_limit` bytes, never more); `max_runtime`; stop requests (kill, replace,
//! shutdown, fencing) as SIGTERM to the whole group and SIGKILL after `kill_grace`; and, once
//! the shell has exited, the same treatment for whatever it left behind in its group, so no
//! job process outlives its run.
//! Does not own the database: the caller records the [`Outcome`]. Does not decide *who*
//! may run as whom (that is [`crate::users`]); it only applies a resolved identity.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::users::Identity;

/// Everything needed to start one run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub run_id: i64,
    pub job_name: String,
    pub command: String,
    pub env: Vec<(String, String)>,
    pub identity: Identity,
    pub workdir: String,
    pub max_runtime: Option<Duration>,
    pub kill_grace: Duration,
    pub output_limit: usize,
}

/// Why the supervisor stopped a run that had not ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `sisy.kill` or `overlap = replace` (the database row carries the words).
    KillRequested,
    /// The guardian is shutting down.
    Shutdown,
    /// The run was declared lost while its process still ran here.
    Fenced,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The last `output_limit` bytes of combined output, as lossy UTF-8.
    pub output: String,
    pub output_bytes: u64,
    /// Set when the process could not be started.
    pub start_error: Option<String>,
    pub timed_out: bool,
    pub stopped: Option<StopReason>,
    pub duration: Duration,
}

/// Runs `spec` to its end. `stop` carries a stop request from the guardian; `pid_tx`
/// receives the process id once it is known.
pub async fn run(
    spec: Spec,
    mut stop: watch::Receiver<Option<StopReason>>,
    pid_tx: watch::Sender<Option<u32>>,
) -> Outcome {
    let began = Instant::now();
    let (reader, writer) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return start_failed(format!("cannot create the output pipe: {e}")),
    };
    let mut child = match spawn(&spec, writer) {
        Ok(child) => child,
        Err(e) => {
            return start_failed(format!(
                "cannot start /bin/sh as user '{}' in '{}': {e}",
                spec.identity.name, spec.workdir
            ));
        }
    };
    let pid = child.id().unwrap_or(0);
    let _ = pid_tx.send(Some(pid));
    let pgid = Pid::from_raw(pid as i32);
    let output = tokio::spawn(read_tail(reader, spec.output_limit));

    let mut outcome = Outcome {
        pid: Some(pid),
        ..Outcome::default()
    };
    let timeout_at = spec.max_runtime.map(|d| began + d);
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = sleep_until(timeout_at.unwrap_or(began)), if timeout_at.is_some() && kill_at.is_none() => {
                outcome.timed_out = true;
                kill_at = Some(terminate(pgid, spec.kill_grace));
            }
            changed = stop.changed(), if kill_at.is_none() => {
                let reason = stop.borrow().clone();
                match (changed, reason) {
                    (Ok(()), Some(reason)) => {
                        outcome.stopped = Some(reason);
                        kill_at = Some(terminate(pgid, spec.kill_grace));
                    }
                    (Ok(()), None) => {}
                    // The guardian dropped its handle: it is going away; stop like a shutdown.
                    (Err(_), _) => {
                        outcome.stopped = Some(StopReason::Shutdown);
                        kill_at = Some(terminate(pgid, spec.kill_grace));
                    }
                }
            }
            _ = sleep_until(kill_at.unwrap_or(began)), if kill_at.is_some() => {
                let _ = killpg(pgid, Signal::SIGKILL);
                kill_at = Some(Instant::now() + Duration::from_secs(3600));
            }
        }
    };
    match status {
        Ok(status) => {
            outcome.exit_code = status.code();
            outcome.signal = status.signal();
        }
        Err(e) => outcome.start_error = Some(format!("lost track of the process: {e}")),
    }
    reap_group(pgid, spec.kill_grace).await;
    // Read to EOF; a process that escaped the group with setsid may hold the pipe open, so
    // the wait is bounded once the group is gone.
    match tokio::time::timeout(Duration::from_secs(2), output).await {
        Ok(Ok((text, total))) => {
            outcome.output = text;
            outcome.output_bytes = total;
        }
        _ => {
            outcome.output =
                "(output unavailable: a process outside the job's group kept it open)".into()
        }
    }
    outcome.duration = began.elapsed();
    outcome
}

fn start_failed(error: String) -> Outcome {
    Outcome {
        start_error: Some(error),
        ..Outcome::default()
    }
}

/// Starts the shell. Everything between fork and exec is async-signal-safe libc calls on
/// values prepared beforehand.
fn spawn(spec: &Spec, writer: OwnedFd) -> std::io::Result<tokio::process::Child> {
    let stderr = writer.try_clone()?;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(stderr));
    let workdir = CString::new(spec.workdir.as_bytes())
        .map_err(|_| std::io::Error::other("the workdir contains a NUL byte"))?;
    let switch = spec.identity.switch.clone();
    // SAFETY: the closure only calls async-signal-safe functions (setsid, setgroups, setgid,
    // setuid, chdir, prctl, getppid) on data allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(sw) = &switch
                && (libc::setgroups(sw.groups.len(), sw.groups.as_ptr()) < 0
                    || libc::setgid(sw.gid) < 0
                    || libc::setuid(sw.uid) < 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::chdir(workdir.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // If the guardian dies, its direct child dies with it (set after setuid, which
            // clears it). The rest of the group is handled by the guardian's restart.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(false)
        .spawn()?;
    Ok(child)
}

/// SIGTERM to the group now; returns when SIGKILL is due.
fn terminate(pgid: Pid, grace: Duration) -> Instant {
    let _ = killpg(pgid, Signal::SIGTERM);
    Instant::now() + grace
}

/// After the shell has exited: anything left in its process group gets SIGTERM, then
/// SIGKILL after `grace`. Polls the group (it holds no children of ours to wait on).
async fn reap_group(pgid: Pid, grace: Duration) {
    if !group_alive(pgid) {
        return; // nothing left
    }
    let _ = killpg(pgid, Signal::SIGTERM);
    let give_up = Instant::now() + grace;
    let mut pause = Duration::from_millis(5);
    let mut killed = false;
    while group_alive(pgid) {
        if !killed && Instant::now() >= give_up {
            let _ = killpg(pgid, Signal::SIGKILL);
            killed = true;
        } else if killed && Instant::now() >= give_up + Duration::from_secs(5) {
            tracing::warn!(
                pgid = pgid.as_raw(),
                "processes of a finished run survive SIGKILL (uninterruptible sleep?)"
            );
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Whether any process of the group still runs. A killed orphan stays a zombie until its
/// new parent reaps it (in a container, PID 1 may be slow to, or never do); a zombie runs
/// nothing, so only live members count.
fn group_alive(pgid: Pid) -> bool {
    if killpg(pgid, None).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // After the ")" closing the command name: state, ppid, pgrp, …
        let mut fields = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
        pgrp == Some(pgid.as_raw()) && state != "Z" && state != "X"
    })
}

/// Reads the pipe to EOF, keeping only the last `limit` bytes; returns them (lossy UTF-8,
/// NUL bytes replaced since PostgreSQL text cannot hold them) and the total byte count.
async fn read_tail(reader: OwnedFd, limit: usize) -> (String, u64) {
    let mut tail = Tail::new(limit);
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(reader) {
        Ok(p) => p,
        Err(e) => return (format!("(output unavailable: {e})"), 0),
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => tail.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    tail.finish()
}

/// A bounded tail of a byte stream.
pub struct Tail {
    limit: usize,
    buf: Vec<u8>,
    total: u64,
}

impl Tail {
    pub fn new(limit: usize) -> Tail {
        Tail {
            limit,
            buf: Vec::new(),
            total: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let bytes = &bytes[bytes.len().saturating_sub(self.limit)..];
        self.buf.extend_from_slice(bytes);
        // Trim in amortised steps: only when the buffer holds twice the limit.
        if self.buf.len() >= 2 * self.limit.max(1) {
            let cut = self.buf.len() - self.limit;
            self.buf.drain(..cut);
        }
    }

    pub fn finish(mut self) -> (String, u64) {
        let cut = self.buf.len().saturating_sub(self.limit);
        self.buf.drain(..cut);
        let text = String::from_utf8_lossy(&self.buf).replace('\0', "\u{FFFD}");
        (text, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes_and_counts_all() {
        let mut t = Tail::new(4);
        for chunk in [&b"hello "[..], b"world", b"!"] {
            t.push(chunk);
        }
        assert_eq!(t.finish(), ("rld!".to_string(), 12));
    }

    #[test]
    fn tail_is_lossy_utf8_without_nul() {
        let mut t = Tail::new(16);
        t.push(b"a\0b\xffc");
        let (text, total) = t.finish();
        assert_eq!(text, "a\u{FFFD}b\u{FFFD}c");
        assert_eq!(total, 5);
    }

    #[test]
    fn tail_memory_stays_bounded() {
        let mut t = Tail::new(1000);
        let chunk = vec![b'x'; 65536];
        for _ in 0..1000 {
            t.push(&chunk);
            assert!(t.buf.len() < 2 * 65536 + 1000);
        }
        let (text, total) = t.finish();
        assert_eq!(text.len(), 1000);
        assert_eq!(total, 65536 * 1000);
    }
}

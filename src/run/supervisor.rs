//! The supervisor: runs one admitted run and reports how it ended.
//!
//! Owns the guardian's side of a run: the process spec (`/bin/sh -c COMMAND`, stdin
//! `/dev/null`, its own session and process group, a clean cron-like environment plus the
//! job's `env` and the `SISY_*` variables, the `run_as` user with its supplementary groups,
//! the working directory), handed to a run shim ([`crate::run::shim`]) that starts the shell and
//! owns the job's process tree; the combined stdout+stderr read to EOF into a bounded tail
//! (a job printing 10 GB costs the guardian `output_limit` bytes, never more);
//! `max_runtime`; stop requests (kill, replace, shutdown: SIGTERM to the whole tree and
//! SIGKILL after `kill_grace`; fencing: SIGKILL at once); forwarding the watchdog deadline
//! the heartbeat renews. Once the shell has exited, the shim gives whatever it left behind
//! the same SIGTERM-then-SIGKILL treatment, so no job process outlives its run. Then, with
//! no job process left to change it, the run's `SISY_RESULT` file is taken ([`result`]).
//! Does not own the database: the caller records the [`Outcome`]. Does not decide *who*
//! may run as whom (that is [`crate::run::users`]); it only passes on a resolved identity.

use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::run::orphans::Registry;
use crate::run::proc;
use crate::run::shim::{self, Report};
use crate::run::{Outcome, Spec, StopReason};

/// How long a run waits for its shim to report the job started: a fork and an exec on the
/// slowest machine, with room to spare; past it, the shim spawner is taken for stalled.
const START_PATIENCE: Duration = Duration::from_secs(10);

/// What ties a supervised run to the rest of the guardian.
pub struct Supervision {
    /// Stop requests from the guardian, and why.
    pub stop: watch::Receiver<Option<StopReason>>,
    /// Receives the job's process id once it is known.
    pub pid: watch::Sender<Option<u32>>,
    /// The watchdog deadline the heartbeat renews (see `shim`): past it, the job dies.
    pub lease: watch::Receiver<std::time::Instant>,
    /// Where the job's process group is recorded while it lives (see `orphans`).
    pub registry: Option<Registry>,
}

/// Runs `spec` to its end through a run shim (see `shim`), which owns the job's process
/// tree; this side forwards stop requests and watchdog renewals and reads the output, then
/// the result file (also after a failed start: its directory goes either way).
pub async fn run(spec: Spec, sup: Supervision) -> Outcome {
    let mut outcome = run_process(&spec, sup).await;
    outcome.result = spec.result.take_off_runtime().await;
    outcome
}

/// [`run`] up to the end of the job's processes.
async fn run_process(spec: &Spec, mut sup: Supervision) -> Outcome {
    let began = Instant::now();
    let (reader, writer) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return start_failed(format!("cannot create the output pipe: {e}")),
    };
    let left = lease_left(&sup.lease);
    let mut shim = match shim::launch(spec, writer, left).await {
        Ok(shim) => shim,
        Err(e) => return start_failed(format!("cannot start the run shim: {e}")),
    };
    let output = tokio::spawn(read_tail(reader, spec.output_limit));
    let first = match tokio::time::timeout(START_PATIENCE, shim.reports.next()).await {
        Ok(first) => first,
        Err(_) => {
            // Given up: the control pipe closes with the handle, so a shim that takes the run
            // later does not start it (or, started meanwhile, kills it as it would for a
            // guardian gone).
            shim::replace_spawner(shim.spawner);
            drop(shim);
            output.abort();
            return start_failed(format!(
                "the run shim did not start the job within {} s (its spawner stopped or \
                 stuck?); the spawner is replaced for the next run",
                START_PATIENCE.as_secs()
            ));
        }
    };
    let (pid, started_at) = match first {
        Some(Report::Started { pid, at }) => (pid, at),
        other => {
            // After an error the shim ends the run: its report pipe ends.
            while shim.reports.next().await.is_some() {}
            output.abort();
            return start_failed(match other {
                Some(Report::Error(e)) => e,
                _ => "the run shim ended before it could start the job".into(),
            });
        }
    };
    let _ = sup.pid.send(Some(pid));
    let pgid = Pid::from_raw(pid as i32);
    let _record = match &sup.registry {
        Some(r) => r.record_off_runtime(spec.run_id, pid, &spec.env).await,
        None => None,
    };

    let mut outcome = Outcome {
        pid: Some(pid),
        started_at,
        ..Outcome::default()
    };
    let timeout_at = spec.max_runtime.map(|d| began + d);
    let (mut stop_open, mut lease_open) = (true, true);
    loop {
        tokio::select! {
            // The shim's report pipe ends when the shim has exited (it is not inherited).
            report = shim.reports.next() => match report {
                Some(report) => note(&mut outcome, spec, report),
                None => break,
            },
            _ = sleep_until(timeout_at.unwrap_or(began)), if timeout_at.is_some() && !outcome.timed_out && outcome.stopped.is_none() => {
                outcome.timed_out = true;
                shim.control.terminate();
            }
            changed = sup.stop.changed(), if stop_open => {
                // A dropped handle means the guardian is going away: stop like a shutdown.
                let reason = match changed {
                    Ok(()) => sup.stop.borrow().clone(),
                    Err(_) => {
                        stop_open = false;
                        Some(StopReason::Shutdown)
                    }
                };
                if let Some(reason) = reason {
                    stop(&mut outcome, &shim.control, reason);
                }
            }
            changed = sup.lease.changed(), if lease_open => match changed {
                Ok(()) => shim.control.lease(lease_left(&sup.lease)),
                Err(_) => lease_open = false,
            },
        }
    }
    if outcome.exit_code.is_none() && outcome.signal.is_none() {
        outcome.start_error = Some(
            "lost track of the job: its run shim ended before the job did; the job's processes were killed"
                .into(),
        );
    }
    // Normally the shim left nothing behind; if it was killed itself, this cleans up.
    reap_group(pgid, spec.kill_grace).await;
    // Read to EOF; a process outside the job's tree (the shim could not adopt it) may hold
    // the pipe open, so the wait is bounded once the tree is gone.
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

/// Takes one report of the shim into the outcome (while the job runs and after the shim
/// exited alike: one reading of the protocol).
fn note(outcome: &mut Outcome, spec: &Spec, report: Report) {
    match report {
        Report::Exited(code) => outcome.exit_code = Some(code),
        Report::Signaled(sig) => outcome.signal = Some(sig),
        Report::Unresponsive => outcome.unresponsive = true,
        Report::Survivors => tracing::warn!(
            run_id = spec.run_id,
            pgid = outcome.pid,
            "processes of the run survive SIGKILL (uninterruptible sleep?)"
        ),
        _ => {}
    }
}

/// Forwards a stop request to the shim. Fencing kills at once and outranks a gentler stop
/// already under way: the run has been handed to another host.
fn stop(outcome: &mut Outcome, control: &shim::Control, reason: StopReason) {
    match (&outcome.stopped, &reason) {
        (None, StopReason::Fenced) | (Some(_), StopReason::Fenced) => {
            control.kill();
            outcome.stopped = Some(reason);
        }
        (None, _) => {
            control.terminate();
            outcome.stopped = Some(reason);
        }
        (Some(_), _) => {}
    }
}

fn lease_left(lease: &watch::Receiver<std::time::Instant>) -> Duration {
    lease
        .borrow()
        .saturating_duration_since(std::time::Instant::now())
}

fn start_failed(error: String) -> Outcome {
    Outcome {
        start_error: Some(error),
        ..Outcome::default()
    }
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
    killpg(pgid, None).is_ok() && !proc::group_members(pgid.as_raw()).is_empty()
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

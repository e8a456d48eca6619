//! The shim process itself: a child of the shim spawner (see `spawner`), forked for one run
//! with the job on fd 4, its reports on fd 3, its control pipe as stdin and the guardian's
//! pidfd (where the kernel has them) on fd 5.
//!
//! A single-threaded `poll` loop over the control pipe (stdin), a signalfd and the
//! guardian's pidfd, with the watchdog deadline and the stop timers as its timeout:
//!
//! ```text
//!  loop: reap children ─▶ shell ended and no descendant left? exit
//!        guardian gone (control EOF, pidfd readable)? ─▶ stop: SIGTERM, SIGKILL after grace
//!        watchdog deadline passed? ─▶ report `unresponsive`, SIGKILL the tree
//!        shell ended? ─▶ stop what it left behind
//!        stopping? ─▶ signal the job's group and every adopted descendant
//!        poll(control, signalfd, pidfd, timeout)
//! ```
//! Does not start a runtime, take a lock or know about the database.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::protocol::{
    Args, GIVE_UP, GUARDIAN_FD, JOB_FD, Job, MAX_JOB_BYTES, REPORT_FD, Report, SCAN, SUBCOMMAND,
    monotonic_ns,
};
use super::shell::spawn_shell;
use super::spawner::exited;
use crate::run::proc;

/// One run in a shim: its descriptors are in place (see `spawner`). Returns whether the
/// shim may serve another run: the job's tree is gone, nothing survived, and the guardian
/// lives.
pub(super) fn run(args: Args) -> bool {
    // SAFETY: fd 3 was set up by the guardian; we check it is open before taking it.
    if unsafe { libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        eprintln!("error: {SUBCOMMAND} must be started by `sisy guardian`");
        return false;
    }
    let mut reports = unsafe { File::from_raw_fd(REPORT_FD) };
    // SAFETY: F_GETFD only tells whether fd 5 is open; the spawner placed it for us to own.
    let guardian = (unsafe { libc::fcntl(GUARDIAN_FD, libc::F_GETFD) } >= 0)
        .then(|| unsafe { OwnedFd::from_raw_fd(GUARDIAN_FD) });
    let started = read_job().and_then(|job| Shim::start(args, guardian, &job, &mut reports));
    match started {
        Ok(mut shim) => shim.supervise(&mut reports) && !shim.guardian_gone,
        Err(e) => {
            let _ = reports.write_all(Report::Error(e).line().as_bytes());
            // The shell's start failed: nothing of the job runs (std reaps a child whose
            // exec failed).
            true
        }
    }
}

/// The shim's state while the job runs.
struct Shim {
    args: Args,
    me: Pid,
    /// The shell: its pid is also the job's process group.
    shell: Pid,
    shell_ended: bool,
    /// Whether the last reap found any child (living or not yet reaped) at all.
    has_children: bool,
    /// The watchdog: past this, the guardian has stopped renewing and the tree dies.
    deadline: Instant,
    watchdog_fired: bool,
    guardian_gone: bool,
    /// The guardian's pidfd: readable once the guardian has exited.
    guardian: Option<OwnedFd>,
    stopping: Option<Stopping>,
    signals: SignalFd,
    control: File,
    control_buf: Vec<u8>,
    control_open: bool,
}

/// How the tree is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM to the tree, SIGKILL after `kill_grace`.
    Terminate,
    /// SIGKILL at once (fencing, the watchdog).
    Kill,
}

/// Stopping the tree: SIGTERM to each target once, SIGKILL to all of it from `kill_at`.
struct Stopping {
    kill_at: Instant,
    killed: bool,
    /// Processes and groups already sent SIGTERM.
    termed: HashSet<i32>,
}

/// The job the guardian wrote on [`JOB_FD`]; the descriptor is closed before the shell
/// starts, so the job never sees it.
fn read_job() -> Result<Job, String> {
    // SAFETY: fcntl with integer arguments; F_GETFD only tells whether fd 4 is open.
    if unsafe { libc::fcntl(JOB_FD, libc::F_GETFD) } < 0 {
        return Err(format!(
            "{SUBCOMMAND} was started without the job on fd {JOB_FD}"
        ));
    }
    // SAFETY: fd 4 is open (checked above) and was handed to this process to own.
    let file = unsafe { File::from_raw_fd(JOB_FD) };
    let mut text = Vec::new();
    file.take(MAX_JOB_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read the job from the guardian: {e}"))?;
    serde_json::from_slice(&text)
        .map_err(|e| format!("the guardian's job description is unreadable: {e}"))
}

impl Shim {
    fn start(
        args: Args,
        guardian: Option<OwnedFd>,
        job: &Job,
        reports: &mut File,
    ) -> Result<Shim, String> {
        // Own session: signals aimed at the guardian's group or terminal do not reach us.
        let _ = nix::unistd::setsid();
        // SAFETY: plain prctl with an integer argument.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } < 0 {
            return Err(format!(
                "cannot become a child subreaper: {}",
                io::Error::last_os_error()
            ));
        }
        let signals = signal_fd()?;
        if guardian.as_ref().is_some_and(|g| exited(g.as_fd())) {
            return Err("the guardian ended before the job could start".into());
        }
        // SAFETY: fd 0 is the control pipe the guardian gave us as stdin.
        let control = unsafe { File::from_raw_fd(0) };
        set_nonblocking(0).map_err(|e| format!("control pipe: {e}"))?;
        // A message that waited (a stopped spawner or shim) may come after the guardian
        // gave the run up, closing its end, or after the watchdog's deadline.
        if hung_up(control.as_fd()) {
            return Err("the guardian gave up on the run before the job could start".into());
        }
        if monotonic_ns() >= args.watchdog_at_ns {
            return Err(
                "the watchdog deadline passed before the job could start (the guardian \
                 stopped renewing it)"
                    .into(),
            );
        }
        let shell = spawn_shell(&args, job)?;
        // The shell's start, as the job's own clock would tell it: its exec has succeeded.
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_micros()).ok());
        let started = Report::Started {
            pid: shell.as_raw() as u32,
            at,
        };
        let _ = reports.write_all(started.line().as_bytes());
        // The output pipe is the job's alone: EOF comes when the job's processes are gone.
        detach_stdio();
        Ok(Shim {
            deadline: Instant::now()
                + Duration::from_nanos(args.watchdog_at_ns.saturating_sub(monotonic_ns())),
            args,
            me: nix::unistd::getpid(),
            shell,
            shell_ended: false,
            has_children: true,
            watchdog_fired: false,
            guardian_gone: false,
            guardian,
            stopping: None,
            signals,
            control,
            control_buf: Vec::new(),
            control_open: true,
        })
    }

    /// The loop: reap, decide, signal, wait for the next event. Returns whether the tree
    /// is all gone (false: processes survived SIGKILL).
    fn supervise(&mut self, reports: &mut File) -> bool {
        loop {
            self.reap(reports);
            if self.shell_ended && !self.has_children {
                return true;
            }
            let now = Instant::now();
            if !self.watchdog_fired && now >= self.deadline {
                self.watchdog_fired = true;
                if !self.shell_ended && !self.guardian_gone {
                    let _ = reports.write_all(Report::Unresponsive.line().as_bytes());
                }
                self.stop(Stop::Kill);
            }
            if self.shell_ended || self.guardian_gone {
                self.stop(Stop::Terminate);
            }
            if let Some(s) = &mut self.stopping {
                if !s.killed && now >= s.kill_at {
                    s.killed = true;
                }
                if s.killed && now >= s.kill_at + GIVE_UP {
                    let _ = reports.write_all(Report::Survivors.line().as_bytes());
                    return false;
                }
                signal_tree(self.me, self.shell, s);
            }
            self.wait_for_event(now);
        }
    }

    /// Starts stopping the tree, or hastens a stop in progress (a kill outranks a
    /// termination under way).
    fn stop(&mut self, how: Stop) {
        let now = how == Stop::Kill;
        let at = Instant::now();
        let grace = Duration::from_millis(self.args.kill_grace_ms);
        match &mut self.stopping {
            Some(s) if now => {
                s.kill_at = s.kill_at.min(at);
                s.killed = true;
            }
            Some(_) => {}
            None => {
                self.stopping = Some(Stopping {
                    kill_at: if now { at } else { at + grace },
                    killed: now,
                    termed: HashSet::new(),
                })
            }
        }
    }

    /// Reaps every child that ended; reports the shell's end.
    fn reap(&mut self, reports: &mut File) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    self.has_children = true;
                    return;
                }
                Ok(status) => {
                    if status.pid() == Some(self.shell) {
                        self.shell_ended = true;
                        let report = match status {
                            WaitStatus::Exited(_, code) => Some(Report::Exited(code)),
                            WaitStatus::Signaled(_, sig, _) => Some(Report::Signaled(sig as i32)),
                            _ => None,
                        };
                        if let Some(r) = report {
                            let _ = reports.write_all(r.line().as_bytes());
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    // ECHILD: no descendant left at all (adopted ones included).
                    self.has_children = false;
                    return;
                }
            }
        }
    }

    /// Waits for a child to end, a signal, a control message or the next deadline.
    fn wait_for_event(&mut self, now: Instant) {
        let mut wait = if self.stopping.is_some() {
            SCAN
        } else {
            // Besides the watchdog, wake once a second whatever happens.
            self.deadline
                .saturating_duration_since(now)
                .min(Duration::from_secs(1))
        };
        if let Some(s) = &self.stopping
            && !s.killed
        {
            wait = wait.min(s.kill_at.saturating_duration_since(now));
        }
        let mut fds = [
            readable(self.signals.as_raw_fd()),
            readable(if self.control_open { 0 } else { -1 }),
            readable(match &self.guardian {
                Some(g) if !self.guardian_gone => g.as_raw_fd(),
                _ => -1,
            }),
        ];
        let timeout = wait.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: fds is a valid array of three pollfd for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout) };
        if ready <= 0 {
            return;
        }
        if fds[0].revents != 0 {
            // SIGCHLD: the reap at the top of the loop. Other signals change nothing: the
            // guardian's end is seen on the control pipe and the pidfd.
            while let Ok(Some(_)) = self.signals.read_signal() {}
        }
        if fds[1].revents != 0 {
            self.read_control();
        }
        if fds[2].revents != 0 {
            self.guardian_gone = true;
        }
    }

    fn read_control(&mut self) {
        let mut buf = [0u8; 512];
        loop {
            match self.control.read(&mut buf) {
                Ok(0) => {
                    // Every copy of the write end is closed: the guardian is gone.
                    self.control_open = false;
                    self.guardian_gone = true;
                    return;
                }
                Ok(n) => self.control_buf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        while let Some(end) = self.control_buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.control_buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            match line.split_once(' ').unwrap_or((&line, "")) {
                ("lease", ms) => {
                    if let Ok(ms) = ms.parse::<u64>() {
                        self.deadline = Instant::now() + Duration::from_millis(ms);
                    }
                }
                ("term", _) => self.stop(Stop::Terminate),
                ("kill", _) => self.stop(Stop::Kill),
                _ => {}
            }
        }
    }
}

/// Sends the tree its signal: SIGTERM once per target while `killed` is false, SIGKILL to
/// everything otherwise. Targets: the job's group, each adopted child and its group (one
/// that left the job's group with setsid). A descendant whose parent is still alive is
/// reached through that parent's group, or adopted once the parent dies.
fn signal_tree(me: Pid, shell: Pid, s: &mut Stopping) {
    let sig = if s.killed {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    let mut targets = vec![(shell.as_raw(), true)];
    for (pid, pgrp) in proc::children_of(me.as_raw()) {
        if pid != shell.as_raw() {
            targets.push((pid, false));
        }
        if pgrp > 1 && pgrp != me.as_raw() {
            targets.push((pgrp, true));
        }
    }
    for (id, group) in targets {
        // A group is keyed negative so that a pid and a group id never collide.
        let key = if group { -id } else { id };
        if !s.killed && !s.termed.insert(key) {
            continue;
        }
        let _ = if group {
            killpg(Pid::from_raw(id), sig)
        } else {
            kill(Pid::from_raw(id), sig)
        };
    }
}

/// A `poll` entry waiting for `fd` to be readable (-1: an entry `poll` skips).
pub(super) fn readable(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Blocks SIGCHLD and the signals that ask a process to end, and returns a signalfd that
/// reads them: the shim's and the spawner's one way to hear of them, in their `poll` loop.
pub(super) fn signal_fd() -> Result<SignalFd, String> {
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        mask.add(sig);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| format!("sigprocmask: {e}"))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))
}

/// Whether the writing end of a pipe has been closed.
fn hung_up(pipe: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut fd = [readable(pipe.as_raw_fd())];
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(fd.as_mut_ptr(), 1, 0) > 0 && fd[0].revents & libc::POLLHUP != 0 }
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Points the shim's stdout and stderr at /dev/null, so only the job holds the output pipe.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto the standard descriptors of this single-threaded process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
}

/// Between two runs: nothing of the last run left on 3 to 5 (its reports, job and pidfd
/// copy), whichever step it ended at, and stdin, stdout and stderr on /dev/null.
pub(super) fn forget_run() {
    for fd in [REPORT_FD, JOB_FD, GUARDIAN_FD] {
        // SAFETY: closing descriptor numbers of the finished run; EBADF when already closed.
        unsafe { libc::close(fd) };
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    if let Ok(null) = null {
        let raw = null.as_raw_fd();
        for fd in 0..=2 {
            if fd != raw {
                // SAFETY: dup2 onto the standard descriptors of this single-threaded process.
                unsafe { libc::dup2(raw, fd) };
            }
        }
        if raw <= 2 {
            // It landed on a standard descriptor the run had closed: it stays there.
            std::mem::forget(null);
        }
    }
}

//! The shim spawner: `sisy __run-shim GUARDIAN_PID`, one long-lived process per guardian
//! that forks a run shim for each run, so that a run costs a `fork` of this small
//! single-threaded process instead of a fork of the guardian and an `exec` of the whole
//! `sisy` binary (dynamic loading and page faults: most of a run's CPU before).
//!
//! ```text
//!  guardian ── socket on fd 3 (SOCK_SEQPACKET): one message per run ──▶ spawner
//!              the shim's arguments (JSON) + 4 descriptors (SCM_RIGHTS):  │ fork
//!              control (read end), output, reports, the job's memfd       ▼
//!                                                                          run shim
//! ```
//!
//! The child places the four descriptors where a shim expects them (stdin, stdout and
//! stderr, 3, 4) and the guardian's pidfd on 5, then is the run shim (`process::run`). The
//! spawner keeps nothing of a run: it closes the run's descriptors once it has forked, and
//! reaps its children. A fork that fails is reported on the run's report pipe, so the
//! guardian records why, as for any shim that cannot start the job.
//!
//! It is started from the guardian's spawner thread with an empty environment, in its own
//! session, and ends when the guardian does (PR_SET_PDEATHSIG, end of the socket). Its end
//! does not end the shims it started: each one watches the guardian itself (its control
//! pipe's end, the guardian's pidfd), so a killed spawner loses no run; the guardian starts
//! another at its next launch.

use std::ffi::OsString;
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use super::process::{self, readable};
use super::protocol::{
    Args, CONTROL_FDS, GUARDIAN_FD, JOB_FD, MAX_ARGS_BYTES, REPORT_FD, Report, SOCKET_FD,
    SUBCOMMAND,
};

/// The spawner's entry point: `sisy __run-shim GUARDIAN_PID`; never returns.
pub fn main(args: &[OsString]) -> ! {
    let guardian = match args {
        [pid] => pid.to_str().and_then(|p| p.parse::<i32>().ok()),
        _ => None,
    };
    let code = match guardian {
        Some(pid) if pid > 0 => match Spawner::start(pid) {
            Ok(spawner) => spawner.serve(),
            Err(e) => {
                eprintln!("error: {SUBCOMMAND}: {e}");
                2
            }
        },
        _ => {
            eprintln!("error: {SUBCOMMAND} is internal to `sisy guardian` and not for direct use");
            2
        }
    };
    std::process::exit(code)
}

struct Spawner {
    socket: OwnedFd,
    signals: SignalFd,
    /// The guardian's pidfd (readable once it has exited), handed to every shim; None on a
    /// kernel without pidfd_open (before 5.3): the shims then watch their control pipe only.
    guardian: Option<OwnedFd>,
}

impl Spawner {
    fn start(guardian: i32) -> Result<Spawner, String> {
        // SAFETY: fcntl with integer arguments; tells whether fd 3 is open.
        if unsafe { libc::fcntl(SOCKET_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err("must be started by `sisy guardian` (no socket on fd 3)".into());
        }
        // SAFETY: fd 3 is open (checked above) and was handed to this process to own.
        let socket = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
        // Nothing the guardian itself inherited (a service manager's or a shell's descriptors)
        // reaches the shims and their jobs: everything past the socket closes.
        // SAFETY: close_range with integer arguments; on a kernel without it nothing closes.
        unsafe { libc::syscall(libc::SYS_close_range, SOCKET_FD as u32 + 1, u32::MAX, 0) };
        // Own session: signals aimed at the guardian's group or terminal do not reach us.
        let _ = nix::unistd::setsid();
        let signals = process::signal_fd()?;
        let guardian_fd = pidfd_open(guardian);
        // Checked after opening the pidfd, so that it names the guardian, not a later
        // process with its pid.
        if nix::unistd::getppid().as_raw() != guardian {
            return Err("the guardian ended before the spawner could start".into());
        }
        Ok(Spawner {
            socket,
            signals,
            guardian: guardian_fd,
        })
    }

    /// Forks a shim per message until the guardian is gone. Returns the exit code.
    fn serve(self) -> i32 {
        loop {
            let mut fds = [
                readable(self.signals.as_raw_fd()),
                readable(self.socket.as_raw_fd()),
            ];
            // SAFETY: fds is a valid array of two pollfd for the duration of the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if ready <= 0 {
                continue;
            }
            if fds[0].revents != 0 {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    if info.ssi_signo as i32 != libc::SIGCHLD {
                        // PR_SET_PDEATHSIG (the guardian died) or someone asked.
                        return 0;
                    }
                }
                reap();
            }
            if fds[1].revents != 0 {
                match self.receive() {
                    Received::Run(args, fds) => self.fork_shim(args, fds),
                    Received::Bad => {}
                    Received::End => return 0,
                }
            }
        }
    }

    /// The next message: a run's arguments and its four descriptors.
    fn receive(&self) -> Received {
        let mut data = vec![0u8; MAX_ARGS_BYTES];
        let mut space = nix::cmsg_space!([RawFd; CONTROL_FDS]);
        let mut iov = [IoSliceMut::new(&mut data)];
        let message = recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let (len, mut fds) = match message {
            Ok(m) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = m.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = cmsg {
                            // SAFETY: the kernel installed these descriptors for us.
                            fds.extend(
                                raw.into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                }
                (m.bytes, fds)
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return Received::Bad,
            Err(_) => return Received::End,
        };
        if len == 0 && fds.is_empty() {
            return Received::End;
        }
        let args = serde_json::from_slice::<Args>(&data[..len]);
        match (args, fds.len()) {
            (Ok(args), CONTROL_FDS) => {
                let fds: [OwnedFd; CONTROL_FDS] = match fds.try_into() {
                    Ok(fds) => fds,
                    Err(_) => return Received::Bad,
                };
                Received::Run(args, fds)
            }
            (args, n) => {
                // Say what was wrong on the report pipe, if there is one: the guardian then
                // records it for the run instead of waiting.
                if n == CONTROL_FDS {
                    let why = match args {
                        Err(e) => {
                            format!("the guardian's message to the shim spawner is unreadable: {e}")
                        }
                        Ok(_) => unreachable!("a whole message is a run"),
                    };
                    let mut report = std::fs::File::from(fds.swap_remove(2));
                    let _ = report.write_all(Report::Error(why).line().as_bytes());
                }
                Received::Bad
            }
        }
    }

    /// Forks the run's shim; the child never returns from here.
    fn fork_shim(&self, args: Args, fds: [OwnedFd; CONTROL_FDS]) {
        // SAFETY: this process is single-threaded, so the child may do anything the parent
        // could; it only rearranges descriptors and becomes the shim.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                let own = [
                    Some(self.socket.as_raw_fd()),
                    Some(self.signals.as_raw_fd()),
                ]
                .into_iter()
                .chain([self.guardian.as_ref().map(|g| g.as_raw_fd())])
                .flatten();
                if become_shim(fds, self.guardian.as_ref(), own).is_err() {
                    // SAFETY: leaving the forked child without running the parent's exit code.
                    unsafe { libc::_exit(1) };
                }
                std::process::exit(process::run(args))
            }
            Ok(nix::unistd::ForkResult::Parent { .. }) => {}
            Err(e) => {
                let mut report = std::fs::File::from(fds.into_iter().nth(2).expect("four fds"));
                let why = format!("cannot fork the run shim: {e}");
                let _ = report.write_all(Report::Error(why).line().as_bytes());
            }
        }
    }
}

enum Received {
    Run(Args, [OwnedFd; CONTROL_FDS]),
    /// A message that is not a run (said on its report pipe where there was one).
    Bad,
    /// The guardian closed its end.
    End,
}

/// In the forked child: the run's descriptors where a shim expects them (stdin, stdout and
/// stderr the output, 3, 4) and the guardian's pidfd at [`GUARDIAN_FD`]; the spawner's own
/// descriptors (`own`: its socket, signalfd and pidfd) closed. Everything is first copied out
/// of the way (above 10) and the originals closed, so that no placement can overwrite a
/// descriptor still to be placed, nor a close undo one placed.
fn become_shim(
    fds: [OwnedFd; CONTROL_FDS],
    guardian: Option<&OwnedFd>,
    own: impl Iterator<Item = RawFd>,
) -> nix::Result<()> {
    let [control, output, report, job] = &fds;
    let wanted = [
        (control.as_raw_fd(), 0),
        (output.as_raw_fd(), 1),
        (output.as_raw_fd(), 2),
        (report.as_raw_fd(), REPORT_FD),
        (job.as_raw_fd(), JOB_FD),
    ];
    let mut moved = Vec::with_capacity(wanted.len() + 1);
    let pidfd = guardian.map(|g| (g.as_raw_fd(), GUARDIAN_FD));
    for (from, to) in wanted.into_iter().chain(pidfd) {
        // SAFETY: `from` is a descriptor of this process; the copy is closed at exec.
        let high = unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 10) };
        if high < 0 {
            return Err(nix::errno::Errno::last());
        }
        moved.push((high, to));
    }
    drop(fds);
    // The spawner's own: this process never returns to the spawner's code, whose handles
    // would close them again.
    for fd in own {
        let _ = nix::unistd::close(fd);
    }
    for (high, to) in &moved {
        // dup2 clears close-on-exec on the copy; the shim sets it again where needed.
        // SAFETY: both are descriptors of this process.
        if unsafe { libc::dup2(*high, *to) } < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    for (high, _) in moved {
        let _ = nix::unistd::close(high);
    }
    if guardian.is_some() {
        // SAFETY: fcntl with integer arguments on the pidfd just placed.
        unsafe { libc::fcntl(GUARDIAN_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Reaps every shim that has ended.
fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// A pidfd of `pid` (Linux 5.3 and later), or None.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: a plain system call with integer arguments; a non-negative result is a new
    // descriptor this process owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: fcntl with integer arguments on a descriptor we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(fd)
}

/// Whether the process behind `pidfd` has exited (the pidfd is readable then).
pub(super) fn exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fd = [readable(pidfd.as_raw_fd())];
    // SAFETY: one valid pollfd, no wait.
    unsafe { libc::poll(fd.as_mut_ptr(), 1, 0) > 0 }
}

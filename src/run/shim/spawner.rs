//! The shim spawner: `sisy __run-shim GUARDIAN_PID`, one long-lived process per guardian
//! that hands each run to a run shim of its pool, forking one when none is free. A run
//! costs a message to a waiting process, not a fork of the guardian and an `exec` of the
//! whole `sisy` binary (dynamic loading and page faults: most of a run's CPU before), nor a
//! fork and an exit of a shim.
//!
//! ```text
//!  guardian ── socket on fd 3 (SOCK_SEQPACKET): one message per run ──▶ spawner
//!              the shim's arguments (JSON) + 4 descriptors (SCM_RIGHTS):  │ the same message,
//!              control (read end), output, reports, the job's memfd       ▼ to a free shim
//!                                                     run shim (its own socket: "free" after a run)
//! ```
//!
//! A shim forked by the spawner keeps its socket and the guardian's pidfd, closes everything
//! else of the spawner's, and waits for a run. For each run it places the four descriptors
//! where a shim expects them (stdin, stdout and stderr, 3, 4) and a copy of the pidfd on 5,
//! is the run shim for that run (`process::run`), then drops everything of the run and says
//! it is free. It exits instead when the run left processes it could not kill (they would
//! be taken for the next run's), when the guardian has gone, or when the spawner has (its
//! socket ends). A shim free for [`LINGER`] is let go: an idle guardian keeps no pool.
//!
//! The spawner keeps nothing of a run: it closes the run's descriptors once a shim has them,
//! and reaps its children. A run it cannot hand over (no shim can be forked) is reported on
//! the run's report pipe, so the guardian records why, as for any shim that cannot start the
//! job.
//!
//! It is started from the guardian's spawner thread with an empty environment, in its own
//! session, and ends when the guardian does (PR_SET_PDEATHSIG, end of the socket). Its end
//! does not end a run: each shim watches the guardian itself (its control pipe's end, the
//! guardian's pidfd), so a killed spawner loses no run; the guardian starts another at its
//! next launch.

use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use super::process::{self, readable};
use super::protocol::{
    Args, CONTROL_FDS, GUARDIAN_FD, JOB_FD, MAX_ARGS_BYTES, REPORT_FD, Report, SOCKET_FD,
    SUBCOMMAND, socket_pair,
};

/// How long a free shim waits for a run before it is let go.
const LINGER: Duration = Duration::from_secs(60);
/// Where a shim keeps its socket to the spawner and the guardian's pidfd between runs
/// (both close-on-exec: no job sees them).
const POOL_SOCKET_FD: i32 = 6;
const POOL_GUARDIAN_FD: i32 = 7;
/// What a shim says on its socket when it is free for another run.
const FREE: &[u8] = b"free";

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

/// Puts back to default every signal the guardian was started with ignored (an ignored
/// signal stays ignored across `exec`: a service manager's or a shell's choice would reach
/// every job), except SIGPIPE, which the shims keep ignored and each job's child resets.
/// Raw `rt_sigaction` calls: glibc refuses its own signals 32 and 33, and they count too.
fn default_ignored_signals() {
    /// The kernel's `struct sigaction` on x86-64 and aarch64 (not glibc's).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if [libc::SIGKILL, libc::SIGSTOP, libc::SIGPIPE].contains(&sig) {
            continue;
        }
        let mut old = KernelSigaction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        // SAFETY: rt_sigaction with pointers to live structs of the kernel's layout and the
        // kernel's sigset size (8 bytes).
        unsafe {
            if libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<KernelSigaction>(),
                &raw mut old,
                8,
            ) == 0
                && old.handler == libc::SIG_IGN
            {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &raw const default,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8,
                );
            }
        }
    }
}

struct Spawner {
    socket: OwnedFd,
    signals: SignalFd,
    /// The guardian's pidfd (readable once it has exited), handed to every shim; None on a
    /// kernel without pidfd_open (before 5.3): the shims then watch their control pipe only.
    guardian: Option<OwnedFd>,
    /// The pool: shims running a run, and free ones (since when).
    shims: Vec<Pooled>,
    buffer: Vec<u8>,
}

/// A shim of the pool, as the spawner knows it.
struct Pooled {
    socket: OwnedFd,
    /// Since when it waits for a run; None while it runs one.
    free_since: Option<Instant>,
}

/// One message: a run's arguments (JSON, read by the shim) and its four descriptors.
struct Message {
    args: Vec<u8>,
    fds: [OwnedFd; CONTROL_FDS],
}

enum Received {
    Run(Message),
    /// Not a run (said on its report pipe where there was one); nothing to do.
    Bad,
    /// The other end closed.
    End,
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
        default_ignored_signals();
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
            shims: Vec::new(),
            buffer: vec![0; MAX_ARGS_BYTES],
        })
    }

    /// Hands each run to a shim until the guardian is gone. Returns the exit code.
    fn serve(mut self) -> i32 {
        loop {
            let timeout = self.let_go_of_lingering();
            let mut fds = vec![
                readable(self.signals.as_raw_fd()),
                readable(self.socket.as_raw_fd()),
            ];
            fds.extend(self.shims.iter().map(|s| readable(s.socket.as_raw_fd())));
            // SAFETY: fds is a valid array of pollfd for the duration of the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
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
            // Shims first: one that has just become free takes the next run.
            let said: Vec<usize> = (0..self.shims.len())
                .filter(|i| fds[i + 2].revents != 0)
                .collect();
            for i in said.into_iter().rev() {
                let mut word = [0u8; 8];
                match nix::unistd::read(&self.shims[i].socket, &mut word) {
                    Ok(n) if n > 0 => self.shims[i].free_since = Some(Instant::now()),
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                    // Gone (its exit is reaped on SIGCHLD).
                    _ => drop(self.shims.swap_remove(i)),
                }
            }
            if fds[1].revents != 0 {
                match receive(&self.socket, &mut self.buffer) {
                    Received::Run(message) => self.hand_over(message),
                    Received::Bad => {}
                    Received::End => return 0,
                }
            }
        }
    }

    /// Lets go of shims free for longer than [`LINGER`] (their socket ends: they exit);
    /// returns the poll timeout until the next one would be (-1: none is free).
    fn let_go_of_lingering(&mut self) -> libc::c_int {
        self.shims
            .retain(|s| s.free_since.is_none_or(|at| at.elapsed() < LINGER));
        self.shims
            .iter()
            .filter_map(|s| s.free_since)
            .map(|at| (LINGER.saturating_sub(at.elapsed()).as_millis() + 1) as libc::c_int)
            .min()
            .unwrap_or(-1)
    }

    /// Gives the run to a free shim, or to a new one.
    fn hand_over(&mut self, message: Message) {
        let fds = message.fds.each_ref().map(|fd| fd.as_raw_fd());
        let mut why = String::from("no shim took it");
        for _ in 0..3 {
            // The one free most recently: the warmest.
            let free = (0..self.shims.len())
                .filter(|i| self.shims[*i].free_since.is_some())
                .max_by_key(|i| self.shims[*i].free_since);
            let i = match free {
                Some(i) => i,
                None => match self.fork_shim() {
                    Ok(shim) => {
                        self.shims.push(shim);
                        self.shims.len() - 1
                    }
                    Err(e) => {
                        why = format!("cannot fork a run shim: {e}");
                        break;
                    }
                },
            };
            let iov = [IoSlice::new(&message.args)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
            match sendmsg::<()>(self.shims[i].socket.as_raw_fd(), &iov, &cmsg, flags, None) {
                Ok(_) => {
                    self.shims[i].free_since = None;
                    // The shim has its own copies; ours close with the message.
                    return;
                }
                Err(e) => {
                    why = format!("a run shim did not take it: {e}");
                    drop(self.shims.swap_remove(i));
                }
            }
        }
        let [_, _, report, _] = message.fds;
        let mut report = std::fs::File::from(report);
        let _ = report.write_all(
            Report::Error(format!("cannot start the run shim: {why}"))
                .line()
                .as_bytes(),
        );
    }

    /// Forks a shim for the pool; the child never returns from here.
    fn fork_shim(&self) -> nix::Result<Pooled> {
        let (mine, theirs) = socket_pair()?;
        // SAFETY: this process is single-threaded, so the child may do anything the parent
        // could; it only rearranges descriptors and waits for runs.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                let guardian = self.guardian.as_ref().map(|g| g.as_raw_fd());
                if keep_only(theirs.as_raw_fd(), guardian).is_err() {
                    // SAFETY: leaving the forked child without running the parent's exit code.
                    unsafe { libc::_exit(1) };
                }
                // Closed by keep_only; the handles must not close the numbers again.
                std::mem::forget((mine, theirs));
                serve_runs(guardian.is_some())
            }
            nix::unistd::ForkResult::Parent { .. } => Ok(Pooled {
                socket: mine,
                free_since: None,
            }),
        }
    }
}

/// In a new shim: its socket at [`POOL_SOCKET_FD`] and the guardian's pidfd at
/// [`POOL_GUARDIAN_FD`] (close-on-exec), every other descriptor of the spawner's closed
/// (its socket to the guardian, its signalfd, the other shims' sockets).
fn keep_only(socket: RawFd, guardian: Option<RawFd>) -> nix::Result<()> {
    let kept = [
        Some((socket, POOL_SOCKET_FD)),
        guardian.map(|g| (g, POOL_GUARDIAN_FD)),
    ];
    place(&kept.into_iter().flatten().collect::<Vec<_>>(), ())?;
    for fd in [POOL_SOCKET_FD, POOL_GUARDIAN_FD] {
        // SAFETY: fcntl with integer arguments; EBADF for a pidfd that is not there.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    for fd in [SOCKET_FD, REPORT_FD, JOB_FD, GUARDIAN_FD] {
        if fd != POOL_SOCKET_FD && fd != POOL_GUARDIAN_FD {
            // SAFETY: the spawner's own descriptors, not used by this process any more.
            unsafe { libc::close(fd) };
        }
    }
    // SAFETY: close_range with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            POOL_GUARDIAN_FD as u32 + 1,
            u32::MAX,
            0,
        )
    };
    Ok(())
}

/// A shim of the pool: waits for a run, serves it, says it is free; never returns.
fn serve_runs(has_guardian_fd: bool) -> ! {
    // SAFETY: placed by keep_only; owned by this process from here on.
    let socket = unsafe { OwnedFd::from_raw_fd(POOL_SOCKET_FD) };
    let guardian = has_guardian_fd.then(|| unsafe { OwnedFd::from_raw_fd(POOL_GUARDIAN_FD) });
    let mut buffer = vec![0; MAX_ARGS_BYTES];
    loop {
        let mut fds = [
            readable(socket.as_raw_fd()),
            readable(guardian.as_ref().map_or(-1, |g| g.as_raw_fd())),
        ];
        // SAFETY: fds is a valid array of two pollfd for the duration of the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } <= 0 {
            continue;
        }
        if fds[1].revents != 0 {
            std::process::exit(0);
        }
        let message = match receive(&socket, &mut buffer) {
            Received::Run(message) => message,
            Received::Bad => continue,
            Received::End => std::process::exit(0),
        };
        if !serve_one(message, guardian.as_ref()) {
            std::process::exit(0);
        }
        if nix::unistd::write(&socket, FREE).is_err() {
            std::process::exit(0);
        }
    }
}

/// One run in a shim of the pool; returns whether the shim may serve another.
fn serve_one(message: Message, guardian: Option<&OwnedFd>) -> bool {
    let [control, output, report, job] = &message.fds;
    let wanted = [
        (control.as_raw_fd(), 0),
        (output.as_raw_fd(), 1),
        (output.as_raw_fd(), 2),
        (report.as_raw_fd(), REPORT_FD),
        (job.as_raw_fd(), JOB_FD),
    ];
    let pidfd = guardian.map(|g| (g.as_raw_fd(), GUARDIAN_FD));
    let placed: Vec<_> = wanted.into_iter().chain(pidfd).collect();
    let args = serde_json::from_slice::<Args>(&message.args);
    if place(&placed, message.fds).is_err() {
        return false;
    }
    let reusable = match args {
        Ok(args) => process::run(args),
        Err(e) => {
            // SAFETY: fd 3 holds the run's report pipe (placed above).
            let mut report = unsafe { std::fs::File::from_raw_fd(REPORT_FD) };
            let why = format!("the guardian's message to the run shim is unreadable: {e}");
            let _ = report.write_all(Report::Error(why).line().as_bytes());
            true
        }
    };
    process::forget_run();
    reusable
}

/// The next message on `socket`: a run's arguments and its four descriptors.
fn receive(socket: &OwnedFd, buffer: &mut [u8]) -> Received {
    let mut space = nix::cmsg_space!([RawFd; CONTROL_FDS]);
    let mut iov = [IoSliceMut::new(buffer)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
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
    let args = iov[0][..len].to_vec();
    match <[OwnedFd; CONTROL_FDS]>::try_from(std::mem::take(&mut fds)) {
        Ok(fds) => Received::Run(Message { args, fds }),
        Err(fds) => {
            // Say it on the report pipe, if there is one: the guardian then records it for
            // the run instead of waiting.
            if let Some(report) = fds.into_iter().nth(2) {
                let mut report = std::fs::File::from(report);
                let why = "the guardian's message to the shim spawner lacks descriptors";
                let _ = report.write_all(Report::Error(why.into()).line().as_bytes());
            }
            Received::Bad
        }
    }
}

/// Puts each descriptor at its number: first all copied out of the way (above 10) and
/// `originals` dropped (the descriptors given, which may sit at the very numbers wanted),
/// so that no placement can overwrite a descriptor still to be placed, nor a close undo one.
fn place<T>(wanted: &[(RawFd, RawFd)], originals: T) -> nix::Result<()> {
    let mut moved = Vec::with_capacity(wanted.len());
    for (from, to) in wanted.iter().copied() {
        // SAFETY: `from` is a descriptor of this process; the copy is closed below.
        let high = unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 10) };
        if high < 0 {
            return Err(nix::errno::Errno::last());
        }
        moved.push((high, to));
    }
    drop(originals);
    for (high, to) in &moved {
        // dup2 clears close-on-exec on the copy; the shim sets it again where needed.
        // SAFETY: both are descriptors of this process.
        if unsafe { libc::dup2(*high, *to) } < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    for (high, _) in moved {
        // SAFETY: the temporary copies made above.
        unsafe { libc::close(high) };
    }
    if wanted.iter().any(|(_, to)| *to == GUARDIAN_FD) {
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

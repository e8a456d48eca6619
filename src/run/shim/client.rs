//! The guardian's side of the run shim: the shim spawner (started once from the long-lived
//! spawner thread, since PR_SET_PDEATHSIG follows the thread that forked, so that thread must
//! live as long as the guardian; started again if it has died), each run's message to it
//! (the shim's arguments, the job on a memfd, control and report pipes), then the control
//! pipe (`lease`, `term`, `kill`) and the reports. Does not decide when to stop a job
//! (supervisor) nor what the shim does with a request (`process`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::unix::pipe;

use super::protocol::{
    Args, Job, MAX_ARGS_BYTES, Report, SOCKET_FD, SUBCOMMAND, monotonic_ns, socket_pair,
};
use crate::run::Spec;

/// A started shim, as the supervisor holds it: its reports end when it has exited.
pub(crate) struct Handle {
    pub reports: Reports,
    pub control: Control,
    /// Which shim spawner took the run: the one to replace if the run never starts.
    pub spawner: Generation,
}

/// Tells one shim spawner from the next the guardian starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation(u64);

/// The spawner the supervisor gave up on (see [`replace_spawner`]); 0 is none.
static STALLED: AtomicU64 = AtomicU64::new(0);

/// How long a send waits for room in the spawner's socket: a spawner that takes no message
/// for this long is stopped or stuck, and is replaced.
const SEND_PATIENCE: Duration = Duration::from_secs(2);

/// Has the next send replace spawner `generation` (if it is still the current one): a run
/// handed to it did not start in time, so it is stopped or stuck. Its shims watch the
/// guardian, not it, so the runs they hold go on.
pub(crate) fn replace_spawner(generation: Generation) {
    STALLED.store(generation.0, Ordering::Relaxed);
}

/// Starts the shim for `spec`; `output` becomes the job's stdout and stderr; the watchdog
/// first fires after `lease`.
pub(crate) async fn launch(spec: &Spec, output: OwnedFd, lease: Duration) -> io::Result<Handle> {
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (report_r, report_w) = nix::unistd::pipe2(cloexec)?;
    let (control_r, control_w) = nix::unistd::pipe2(cloexec)?;
    let job = job_fd(&Job {
        command: spec.command.clone(),
        workdir: spec.workdir.clone(),
        user_name: spec.identity.name.clone(),
        host: spec.host.clone(),
        env: spec.env.clone(),
    })?;
    let args = Args {
        user: spec
            .identity
            .switch
            .as_ref()
            .map(|s| (s.uid, s.gid, s.groups.clone())),
        kill_grace_ms: spec.kill_grace.as_millis() as u64,
        watchdog_at_ns: monotonic_ns() + lease.as_nanos() as u64,
    };
    let args = serde_json::to_vec(&args).map_err(io::Error::other)?;
    if args.len() > MAX_ARGS_BYTES {
        return Err(io::Error::other(format!(
            "user '{}' has too many supplementary groups to hand to the run shim",
            spec.identity.name
        )));
    }
    // The spawner holds its own copies once the message is sent; ours close with the request.
    let spawner = send_from_spawner_thread(Request {
        args,
        fds: [control_r, output, report_w, job],
    })
    .await?;
    Ok(Handle {
        spawner,
        reports: Reports {
            lines: BufReader::new(pipe::Receiver::from_owned_fd(report_r)?).lines(),
        },
        control: Control {
            pipe: pipe::Sender::from_owned_fd(control_w)?,
        },
    })
}

/// The job written to an anonymous memory file, rewound for the shim to read: unlike a pipe
/// it holds any size without a writer waiting on the reader, and shows in no `ps`.
fn job_fd(job: &Job) -> io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    // SAFETY: memfd_create with a valid C string; the descriptor is owned from here on.
    let fd = unsafe { libc::memfd_create(c"sisy-job".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // Serialised first: written straight to the file, the JSON went in one system call per
    // token (about 140 per run).
    let json = serde_json::to_vec(job).map_err(io::Error::other)?;
    file.write_all(&json)?;
    file.rewind()?;
    Ok(file.into())
}

/// The shim's reports, read line by line.
pub(crate) struct Reports {
    lines: Lines<BufReader<pipe::Receiver>>,
}

impl Reports {
    /// The next report; None at EOF (the shim has exited) or on a broken pipe.
    pub async fn next(&mut self) -> Option<Report> {
        loop {
            match self.lines.next_line().await {
                Ok(Some(line)) => {
                    if let Some(report) = Report::parse(&line) {
                        return Some(report);
                    }
                }
                _ => return None,
            }
        }
    }
}

/// The guardian's end of the control pipe.
pub(crate) struct Control {
    pipe: pipe::Sender,
}

impl Control {
    /// The job may run until `left` from now unless renewed.
    pub fn lease(&self, left: Duration) {
        self.send(&format!("lease {}\n", left.as_millis()));
    }

    /// SIGTERM to the tree now, SIGKILL after kill_grace.
    pub fn terminate(&self) {
        self.send("term\n");
    }

    /// SIGKILL to the tree now.
    pub fn kill(&self) {
        self.send("kill\n");
    }

    /// Messages are a few bytes, below PIPE_BUF, so a write is whole or nothing; a full pipe
    /// (a shim that does not read) or a gone shim is ignored rather than waited on.
    fn send(&self, message: &str) {
        let _ = self.pipe.try_write(message.as_bytes());
    }
}

/// One run for the spawner: the shim's arguments (JSON) and its descriptors (control read
/// end, output, report write end, job).
struct Request {
    args: Vec<u8>,
    fds: [OwnedFd; 4],
}

/// Hands `request` to the shim spawner from one thread that lives as long as the process:
/// the spawner is started from it (PR_SET_PDEATHSIG fires when the *thread* that forked the
/// child ends, and tokio runs tasks on threads it may end), and sends block there, not on a
/// worker of the runtime.
async fn send_from_spawner_thread(request: Request) -> io::Result<Generation> {
    type Reply = tokio::sync::oneshot::Sender<io::Result<Generation>>;
    static SPAWNER: LazyLock<io::Result<mpsc::Sender<(Request, Reply)>>> = LazyLock::new(|| {
        let (tx, rx) = mpsc::channel::<(Request, Reply)>();
        std::thread::Builder::new()
            .name("sisy-spawner".into())
            .spawn(move || {
                let mut spawner: Option<Spawner> = None;
                // The sender lives in a static: this loop ends only with the process.
                for (request, reply) in rx {
                    let _ = reply.send(send(&mut spawner, &request));
                }
            })?;
        Ok(tx)
    });
    let thread = SPAWNER
        .as_ref()
        .map_err(|e| io::Error::other(format!("cannot start the spawner thread: {e}")))?;
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    thread
        .send((request, reply_tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .await
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// The running shim spawner: the process and the guardian's end of its socket.
struct Spawner {
    process: std::process::Child,
    socket: OwnedFd,
    generation: Generation,
}

impl Spawner {
    /// Kills and reaps it. Messages it had not taken go with its socket, closing their
    /// report pipes: their supervisors see the shim end before the job started.
    fn end(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Sends one run to the spawner, starting it first if there is none, it has ended or it
/// is stalled (then once more: a message is whole or not sent at all, so a retry cannot
/// start a run twice).
fn send(spawner: &mut Option<Spawner>, request: &Request) -> io::Result<Generation> {
    let fds = request.fds.each_ref().map(|fd| fd.as_raw_fd());
    let mut last = None;
    for _ in 0..2 {
        // One that ended is reaped and replaced before it fails a send.
        if let Some(s) = spawner
            && !matches!(s.process.try_wait(), Ok(None))
        {
            tracing::warn!("the run shim spawner has ended; starting another");
            *spawner = None;
        }
        if let Some(s) = spawner.take_if(|s| s.generation.0 == STALLED.load(Ordering::Relaxed)) {
            tracing::warn!(
                pid = s.process.id(),
                "the run shim spawner did not start a run in time (stopped or stuck?); \
                 starting another"
            );
            s.end();
        }
        if spawner.is_none() {
            *spawner = Some(start_spawner()?);
        }
        let s = spawner.as_mut().expect("started above");
        match send_within(s.socket.as_raw_fd(), &request.args, &fds, SEND_PATIENCE) {
            Ok(()) => return Ok(s.generation),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the run shim spawner; starting another");
                spawner.take().expect("checked above").end();
                last = Some(e);
            }
        }
    }
    Err(io::Error::other(format!(
        "cannot reach the run shim spawner: {}",
        last.expect("two failed attempts")
    )))
}

/// Sends one message without blocking longer than `patience` for room in the socket.
fn send_within(socket: i32, args: &[u8], fds: &[i32], patience: Duration) -> io::Result<()> {
    let iov = [io::IoSlice::new(args)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    match sendmsg::<()>(socket, &iov, &cmsg, flags, None) {
        Err(nix::errno::Errno::EAGAIN) => {}
        other => return other.map(drop).map_err(io::Error::from),
    }
    let mut room = [libc::pollfd {
        fd: socket,
        events: libc::POLLOUT,
        revents: 0,
    }];
    // SAFETY: one valid pollfd for the call's duration.
    let ready = unsafe { libc::poll(room.as_mut_ptr(), 1, patience.as_millis() as i32) };
    if ready <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the shim spawner took no message for {} s",
                patience.as_secs()
            ),
        ));
    }
    sendmsg::<()>(socket, &iov, &cmsg, flags, None)
        .map(drop)
        .map_err(io::Error::from)
}

/// Starts the shim spawner (`sisy __run-shim GUARDIAN_PID`) with its socket on fd 3.
fn start_spawner() -> io::Result<Spawner> {
    let (mine, theirs) = socket_pair()?;
    let exe = if std::path::Path::new("/proc/self/exe").exists() {
        // The running binary even if the file was replaced by an upgrade meanwhile.
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe()?
    };
    let guardian = std::process::id() as i32;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0("sisy")
        .arg(SUBCOMMAND)
        .arg(guardian.to_string())
        // The spawner and its shims run as root: nothing of a job may reach their loader.
        .env_clear()
        // It holds no directory busy; each shell changes to its workdir itself.
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let socket = theirs.as_raw_fd();
    // SAFETY: only async-signal-safe calls (fcntl, dup2, prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first; dup2 clears close-on-exec on the copy at 3.
            let high = libc::fcntl(socket, libc::F_DUPFD_CLOEXEC, 10);
            if high < 0 || libc::dup2(high, SOCKET_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The spawner thread lives as long as the guardian process, so this fires when
            // the process dies, not when some worker thread ends.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != guardian {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let process = cmd.spawn()?;
    drop(theirs);
    static STARTED: AtomicU64 = AtomicU64::new(0);
    Ok(Spawner {
        process,
        socket: mine,
        generation: Generation(STARTED.fetch_add(1, Ordering::Relaxed) + 1),
    })
}

//! The run shim: a small process of the same binary (`sisy __run-shim`) between the guardian
//! and each job, so that no job process lives on unsupervised, whatever happens to the
//! guardian.
//!
//! ```text
//!  guardian ──fork from the spawner thread──▶ sisy __run-shim ARGS  (own session, subreaper,
//!     │                                         empty environment, still root)
//!     │  the job, its fd 4:   command, workdir, env (JSON, read once) │
//!     │  control, its stdin:  lease <ms> | term | kill | EOF          │ setuid, chdir, then
//!     │  reports, its fd 3:   started <pid> | exited <code> |         └──▶ /bin/sh -c -- COMMAND
//!     │                       signaled <sig> | unresponsive |              with the job's env
//!     │                       error <why> | survivors                      (own session: the
//!     │                                                                     job's process group)
//!     └─ output pipe: the shim's stdout/stderr, handed to the shell, never written by the shim
//! ```
//!
//! **Nothing of the job row reaches a process that runs as root.** The shim starts with an
//! empty environment, so `LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT` and the like in a job's
//! `env` never reach its dynamic loader; its command line (`ARGS`, visible in `ps`) holds
//! only what the guardian decided (its pid, the uid and groups, kill_grace, the lease). The
//! job's command, workdir and environment travel on fd 4 (a memfd, so no value shows in
//! `ps` or in the shim's own environment), and are applied only to the shell: the switch of
//! user, then `chdir`, then `execve` with the job's environment, so the loader reads it
//! in a process that already runs as the job's user.
//!
//! The shim owns the job's process tree:
//! - It is a *child subreaper*: a job process whose parent dies is re-parented to the shim,
//!   not to PID 1, so even a process that left the job's process group with `setsid` stays
//!   in reach. The shim exits only when it has no descendant left.
//! - **Guardian death** (SIGKILL, crash): the control pipe reaches EOF (the kernel closes the
//!   guardian's end with the process, whatever thread was running), PR_SET_PDEATHSIG sends
//!   SIGTERM, and the parent pid changes; any of the three stops the job: SIGTERM to the
//!   tree, SIGKILL after `kill_grace`.
//! - **Watchdog**: the guardian renews a deadline (`lease <ms>`) after every heartbeat; it is
//!   never later than the moment the database would let the guardian's lease expire. If it
//!   passes (the guardian is paused with SIGSTOP or hung), the shim SIGKILLs the tree and
//!   reports `unresponsive`: by the time another guardian can declare the run lost and start
//!   a retry, this attempt is dead. A database outage does not stop the renewals (the
//!   guardian is alive, see `heartbeat`), so it never kills a job.
//! - **Stop requests** (`term`: SIGTERM, SIGKILL after `kill_grace`; `kill`: SIGKILL now) go to
//!   the whole tree: the job's group, then every descendant the shim has adopted.
//! - When the shell exits, whatever it left behind gets the same `term` treatment.
//!
//! The shim never starts a runtime, takes no lock and allocates little: it is a `poll` loop
//! over the control pipe and a signalfd. It deliberately does not know about the database,
//! the run's verdict or its output (the guardian reads the output pipe itself).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::LazyLock;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::unix::pipe;

use crate::run::Spec;

mod process;
mod shell;

pub use process::main;

/// The hidden subcommand that runs the shim (`src/main.rs` dispatches it before parsing).
pub const SUBCOMMAND: &str = "__run-shim";
/// The file descriptor the shim writes its reports to.
const REPORT_FD: i32 = 3;
/// The file descriptor the shim reads the job from ([`Job`], JSON).
const JOB_FD: i32 = 4;
/// The most the shim reads from [`JOB_FD`]: more than any command and environment exec
/// accepts (see `launch::spec`), so reaching it means something else is wrong.
const MAX_JOB_BYTES: u64 = 64 << 20;
/// How often the shim looks for new descendants while it is stopping the tree.
const SCAN: Duration = Duration::from_millis(25);
/// How long the shim waits after SIGKILL for processes that do not die (uninterruptible
/// sleep) before it reports them and exits.
const GIVE_UP: Duration = Duration::from_secs(5);

/// What the guardian tells the shim on its command line, as JSON: only what the guardian
/// decided, nothing a job row says verbatim (the command line shows in `ps`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Args {
    /// The guardian's pid: when the shim's parent is no longer this, the guardian is gone.
    guardian: i32,
    /// (uid, gid, supplementary groups) to switch to; None: stay who the guardian is.
    user: Option<(u32, u32, Vec<u32>)>,
    kill_grace_ms: u64,
    /// The watchdog's first deadline, from now.
    lease_ms: u64,
}

/// What the job row says, handed to the shim on [`JOB_FD`] and applied to the shell only,
/// after the switch of user.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    command: String,
    workdir: String,
    /// The user's name and the host's, for messages.
    user_name: String,
    host: String,
    /// The shell's whole environment.
    env: Vec<(String, String)>,
}

/// What the shim reports about the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// The shell runs with this pid (also its process group and session id).
    Started(u32),
    /// The shell could not be started; the sentence says why.
    Error(String),
    Exited(i32),
    Signaled(i32),
    /// The watchdog's deadline passed: the guardian stopped renewing it; the tree was killed.
    Unresponsive,
    /// Processes survived SIGKILL (uninterruptible sleep); the shim gave up waiting.
    Survivors,
}

impl Report {
    fn line(&self) -> String {
        match self {
            Report::Started(pid) => format!("started {pid}\n"),
            Report::Error(why) => format!("error {}\n", why.replace('\n', " ")),
            Report::Exited(code) => format!("exited {code}\n"),
            Report::Signaled(sig) => format!("signaled {sig}\n"),
            Report::Unresponsive => "unresponsive\n".into(),
            Report::Survivors => "survivors\n".into(),
        }
    }

    fn parse(line: &str) -> Option<Report> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        Some(match word {
            "started" => Report::Started(rest.parse().ok()?),
            "error" => Report::Error(rest.to_string()),
            "exited" => Report::Exited(rest.parse().ok()?),
            "signaled" => Report::Signaled(rest.parse().ok()?),
            "unresponsive" => Report::Unresponsive,
            "survivors" => Report::Survivors,
            _ => return None,
        })
    }
}

// ───────────────────────────── the guardian's side ─────────────────────────────

/// A started shim, as the supervisor holds it.
pub(crate) struct Handle {
    pub child: tokio::process::Child,
    pub reports: Reports,
    pub control: Control,
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
        guardian: std::process::id() as i32,
        user: spec
            .identity
            .switch
            .as_ref()
            .map(|s| (s.uid, s.gid, s.groups.clone())),
        kill_grace_ms: spec.kill_grace.as_millis() as u64,
        lease_ms: lease.as_millis() as u64,
    };
    let exe = if std::path::Path::new("/proc/self/exe").exists() {
        // The running binary even if the file was replaced by an upgrade meanwhile.
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe()?
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0("sisy")
        .arg(SUBCOMMAND)
        .arg(serde_json::to_string(&args).map_err(io::Error::other)?)
        // The shim runs as root: nothing of the job may reach its loader (see above).
        .env_clear()
        // The shim holds no directory busy; the shell changes to the workdir itself.
        .current_dir("/")
        .stdin(Stdio::from(control_r))
        .stdout(Stdio::from(output.try_clone()?))
        .stderr(Stdio::from(output));
    let report_fd = report_w.as_raw_fd();
    let job_fd = job.as_raw_fd();
    let guardian = args.guardian;
    // SAFETY: only async-signal-safe calls (dup2, fcntl, prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first, so that placing one cannot overwrite the other; dup2
            // clears close-on-exec on the copies at 3 and 4, the others close at exec.
            let report = libc::fcntl(report_fd, libc::F_DUPFD_CLOEXEC, 10);
            let job = libc::fcntl(job_fd, libc::F_DUPFD_CLOEXEC, 10);
            if report < 0
                || job < 0
                || libc::dup2(report, REPORT_FD) < 0
                || libc::dup2(job, JOB_FD) < 0
            {
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
    let child = spawn_from_spawner_thread(cmd).await?;
    drop(report_w);
    drop(job);
    Ok(Handle {
        child,
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
    serde_json::to_writer(&mut file, job).map_err(io::Error::other)?;
    file.flush()?;
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

/// Forks `cmd` from one thread that lives as long as the process: PR_SET_PDEATHSIG fires
/// when the *thread* that forked the child ends, and tokio runs tasks on threads it may end.
async fn spawn_from_spawner_thread(
    cmd: std::process::Command,
) -> io::Result<tokio::process::Child> {
    type Reply = tokio::sync::oneshot::Sender<io::Result<tokio::process::Child>>;
    type Request = (std::process::Command, tokio::runtime::Handle, Reply);
    static SPAWNER: LazyLock<io::Result<mpsc::Sender<Request>>> = LazyLock::new(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("sisy-spawner".into())
            .spawn(move || {
                // The sender lives in a static: this loop ends only with the process.
                for (cmd, runtime, reply) in rx {
                    let _entered = runtime.enter();
                    let _ = reply.send(tokio::process::Command::from(cmd).spawn());
                }
            })?;
        Ok(tx)
    });
    let spawner = SPAWNER
        .as_ref()
        .map_err(|e| io::Error::other(format!("cannot start the spawner thread: {e}")))?;
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    spawner
        .send((cmd, tokio::runtime::Handle::current(), reply_tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .await
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back() {
        for r in [
            Report::Started(42),
            Report::Error("cannot start /bin/sh: no such file".into()),
            Report::Exited(3),
            Report::Signaled(9),
            Report::Unresponsive,
            Report::Survivors,
        ] {
            let line = r.line();
            assert!(line.ends_with('\n'));
            assert_eq!(Report::parse(line.trim_end()), Some(r));
        }
        assert_eq!(Report::parse("nonsense"), None);
    }

    #[test]
    fn an_error_report_stays_on_one_line() {
        let line = Report::Error("a\nb".into()).line();
        assert_eq!(line.matches('\n').count(), 1);
    }
}

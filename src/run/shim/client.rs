//! The guardian's side of the run shim: starting it from the long-lived spawner thread
//! (PR_SET_PDEATHSIG follows the thread that forked, so that thread must live as long as
//! the guardian) with an empty environment and the job on a memfd, then its control pipe
//! (`lease`, `term`, `kill`) and its reports. Does not decide when to stop a job
//! (supervisor) nor what the shim does with a request (`process`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::LazyLock;
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::unix::pipe;

use super::protocol::{Args, JOB_FD, Job, REPORT_FD, Report, SUBCOMMAND};
use crate::run::Spec;

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

//! Starting the job's shell from the shim: `/bin/sh -c -- COMMAND` in its own session, as
//! the job's user, in its workdir, with the job's environment.
//!
//! Order is the point: between fork and exec the child switches user (groups, gid, uid),
//! then changes to the workdir, and only `execve` installs the job's environment. So the
//! workdir is looked up with the job's rights, not root's (a job learns nothing of paths its
//! user cannot see), and the dynamic loader sees the job's `LD_*` variables in a process
//! that already is the job's user. Each step records itself in a byte of memory shared with
//! the child, so a failure is worded by the step that failed.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use nix::unistd::Pid;

use super::protocol::{Args, Job};

/// The steps of the child between fork and exec, as recorded in [`Step`].
const SWITCH: u8 = 1;
const WORKDIR: u8 = 2;
const EXEC: u8 = 3;

/// Starts the shell; the error is the sentence for the run.
pub(super) fn spawn_shell(args: &Args, job: &Job) -> Result<Pid, String> {
    let workdir = CString::new(job.workdir.as_bytes())
        .map_err(|_| "the workdir contains a NUL byte".to_string())?;
    let user = args.user.clone();
    let me = nix::unistd::getpid().as_raw();
    let step = Step::new().map_err(|e| format!("cannot map a page for the shell's start: {e}"))?;
    let at = step.0 as usize;
    let mut cmd = std::process::Command::new("/bin/sh");
    // `--`: a command starting with `-` is a command, not options of the shell.
    cmd.args(["-c", "--"])
        .arg(&job.command)
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // SAFETY: only async-signal-safe calls and plain stores on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let record = |step: u8| std::ptr::write_volatile(at as *mut u8, step);
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            record(SWITCH);
            if let Some((uid, gid, groups)) = &user
                && (libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0)
            {
                return Err(io::Error::last_os_error());
            }
            record(WORKDIR);
            if libc::chdir(workdir.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            record(EXEC);
            // Set after setuid, which clears it. The shim is single-threaded, so its one
            // thread is the process.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            if libc::getppid() != me {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| failure(step.get(), job, &e))?;
    let pid = Pid::from_raw(child.id() as i32);
    // The shim reaps its children itself (waitpid(-1)); the std handle is not needed.
    std::mem::forget(child);
    Ok(pid)
}

/// The sentence for a shell that could not start, by the step that failed.
fn failure(step: u8, job: &Job, e: &io::Error) -> String {
    let (user, host, workdir) = (&job.user_name, &job.host, &job.workdir);
    match (step, e.raw_os_error()) {
        (SWITCH, _) => format!("cannot switch to user '{user}' on host {host}: {e}"),
        (WORKDIR, Some(libc::ENOENT | libc::ENOTDIR)) => {
            format!("workdir '{workdir}' does not exist on host {host} (or is not a directory)")
        }
        (WORKDIR, Some(libc::EACCES)) => format!(
            "workdir '{workdir}' is not accessible to user '{user}' on host {host} (or does not exist)"
        ),
        (WORKDIR, _) => {
            format!("cannot change to workdir '{workdir}' as user '{user}' on host {host}: {e}")
        }
        _ => format!("cannot start /bin/sh as user '{user}' in '{workdir}': {e}"),
    }
}

/// One byte in a shared anonymous mapping: the forked child writes, the shim reads it after
/// a failed spawn (the child has exited by then).
struct Step(*mut u8);

impl Step {
    fn new() -> io::Result<Step> {
        // SAFETY: a fresh anonymous mapping of one byte (a page in fact), checked below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                1,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Step(at.cast()))
    }

    fn get(&self) -> u8 {
        // SAFETY: the mapping lives as long as self; the child that wrote it has exited.
        unsafe { std::ptr::read_volatile(self.0) }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new().
        unsafe { libc::munmap(self.0.cast(), 1) };
    }
}

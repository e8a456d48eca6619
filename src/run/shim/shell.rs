//! Starting the job's shell from the shim: `/bin/sh -c -- COMMAND` in its own session, as
//! the job's user, in its workdir, with the job's environment.
//!
//! Order is the point: between fork and exec the child switches user (groups, gid, uid),
//! then changes to the workdir, and only `execve` installs the job's environment. So the
//! workdir is looked up with the job's rights, not root's (a job learns nothing of paths its
//! user cannot see), and the dynamic loader sees the job's `LD_*` variables in a process
//! that already is the job's user. Each step records itself in the memory the child shares
//! with the shim until its exec, so a failure is worded by the step that failed.

use std::ffi::{CString, c_void};
use std::io;

use nix::unistd::Pid;

use super::protocol::{Args, Job};

/// The steps of the child between its start and exec, as recorded in [`Plan::step`].
const SWITCH: u8 = 1;
const WORKDIR: u8 = 2;
const EXEC: u8 = 3;

/// The child's stack: it makes a few system calls and nothing else.
const STACK_BYTES: usize = 64 * 1024;

/// Everything the child needs, made before it starts (it allocates nothing), and what it
/// reports back: it shares the shim's memory until its `execve`.
struct Plan {
    argv: [*const libc::c_char; 5],
    envp: Vec<*const libc::c_char>,
    workdir: *const libc::c_char,
    user: Option<(u32, u32, *const libc::gid_t, usize)>,
    null: libc::c_int,
    shim: libc::pid_t,
    /// The last step reached, and the errno of a failed one.
    step: u8,
    errno: libc::c_int,
}

/// Starts the shell; the error is the sentence for the run.
///
/// The child is started with `CLONE_VM | CLONE_VFORK`, as `posix_spawn` does: it borrows
/// the shim's memory until it calls `execve`, and the shim waits for that. A `fork` copied
/// the shim's page tables for each run only for `execve` to throw them away: a fifth of a
/// run's CPU on the job's side. So the child makes system calls only, on its own stack, with
/// what was prepared here.
pub(super) fn spawn_shell(args: &Args, job: &Job) -> Result<Pid, String> {
    let nul = |what: &str| format!("the {what} contains a NUL byte");
    let workdir = CString::new(job.workdir.as_bytes()).map_err(|_| nul("workdir"))?;
    let command = CString::new(job.command.as_bytes()).map_err(|_| nul("command"))?;
    let env: Vec<CString> = job
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).map_err(|_| nul("environment")))
        .collect::<Result<_, _>>()?;
    let null = std::fs::File::open("/dev/null")
        .map_err(|e| format!("cannot open /dev/null for the shell's stdin: {e}"))?;
    let mut plan = Plan {
        // `--`: a command starting with `-` is a command, not options of the shell.
        argv: [
            c"/bin/sh".as_ptr(),
            c"-c".as_ptr(),
            c"--".as_ptr(),
            command.as_ptr(),
            std::ptr::null(),
        ],
        envp: env
            .iter()
            .map(|e| e.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        workdir: workdir.as_ptr(),
        user: args
            .user
            .as_ref()
            .map(|(uid, gid, groups)| (*uid, *gid, groups.as_ptr(), groups.len())),
        null: std::os::fd::AsRawFd::as_raw_fd(&null),
        shim: nix::unistd::getpid().as_raw(),
        step: 0,
        errno: 0,
    };
    let mut stack = vec![0u128; STACK_BYTES / 16];
    // SAFETY: the stack is ours and outlives the child's use of it (CLONE_VFORK: clone
    // returns once the child has exec'd or exited); the child touches only `plan`, which
    // lives until then too, and makes system calls only.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()).cast::<c_void>();
        libc::clone(
            child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut plan).cast(),
        )
    };
    if pid < 0 {
        return Err(failure(0, job, &io::Error::last_os_error()));
    }
    // SAFETY: the child is gone from our memory (exec'd or exited); read what it wrote.
    let (step, errno) = unsafe {
        (
            std::ptr::read_volatile(&plan.step),
            std::ptr::read_volatile(&plan.errno),
        )
    };
    if errno != 0 {
        // It exited without exec: reap it (the shim reaps with waitpid(-1) only later).
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        return Err(failure(step, job, &io::Error::from_raw_os_error(errno)));
    }
    Ok(Pid::from_raw(pid))
}

/// The child, between clone and exec: its own session, the job's user (groups, gid, uid),
/// the workdir, the shim's death as its SIGKILL, /dev/null as stdin, SIGPIPE to default
/// (the shim ignores it, as every Rust program does) and no blocked signal; then `execve`.
/// A failed step is recorded in the plan and the child exits.
extern "C" fn child(plan: *mut c_void) -> libc::c_int {
    // SAFETY: `plan` is the shim's Plan, alive and untouched by the shim while the child
    // runs (CLONE_VFORK); only system calls and stores into it follow.
    unsafe {
        let plan = &mut *plan.cast::<Plan>();
        let fail = |plan: &mut Plan| -> libc::c_int {
            std::ptr::write_volatile(&mut plan.errno, *libc::__errno_location());
            libc::_exit(127)
        };
        let record = |plan: &mut Plan, step: u8| std::ptr::write_volatile(&mut plan.step, step);
        if libc::setsid() < 0 {
            return fail(plan);
        }
        record(plan, SWITCH);
        if let Some((uid, gid, groups, count)) = plan.user
            // The raw calls: glibc's wrappers would try to apply them to every thread of
            // the shim, whose memory this child shares.
            && (libc::syscall(libc::SYS_setgroups, count, groups) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0)
        {
            return fail(plan);
        }
        record(plan, WORKDIR);
        if libc::chdir(plan.workdir) < 0 {
            return fail(plan);
        }
        record(plan, EXEC);
        // Set after the switch of user, which clears it.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::getppid() != plan.shim {
            *libc::__errno_location() = libc::ESRCH;
            return fail(plan);
        }
        if libc::dup2(plan.null, 0) < 0 {
            return fail(plan);
        }
        // Without CLONE_SIGHAND the child's dispositions are its own.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(plan.argv[0], plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(plan)
    }
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

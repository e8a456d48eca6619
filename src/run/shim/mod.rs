//! The run shim: a small process between the guardian and each job, so that no job process
//! lives on unsupervised, whatever happens to the guardian. The shims are forks of the shim
//! spawner (`sisy __run-shim`, one per guardian, see `spawner`) kept in its pool, each
//! serving one run at a time: a run costs a message to a free shim and the exec of the job's
//! shell, not an exec of the whole `sisy` binary.
//!
//! ```text
//!  guardian ──spawner thread──▶ sisy __run-shim PID  (spawner: own session, empty environment)
//!     │        one message per run: ARGS + 4 fds │ the same message, to a free shim
//!     │                                          ▼ (forked when none is free)
//!     │                                        run shim (own session, subreaper, still root)
//!     │  the job, its fd 4:   command, workdir, env (JSON, read once) │
//!     │  control, its stdin:  lease <ms> | term | kill | EOF          │ setuid, chdir, then
//!     │  reports, its fd 3:   started <pid> <t> | exited <code> |     └──▶ /bin/sh -c -- COMMAND
//!     │                       signaled <sig> | unresponsive |              with the job's env
//!     │                       error <why> | survivors                      (own session: the
//!     │  the guardian's pidfd, its fd 5                                     job's process group)
//!     └─ output pipe: the shim's stdout/stderr, handed to the shell, never written by the shim
//! ```
//!
//! **Nothing of the job row reaches a process that runs as root.** The spawner starts with an
//! empty environment, so `LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT` and the like in a job's
//! `env` never reach its dynamic loader (nor a shim's: they are forks of it); its command
//! line (visible in `ps`, also the shims') holds only the guardian's pid, and a run's `ARGS`
//! only what the guardian decided (the uid and groups, kill_grace, the lease). The
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
//!   guardian's end with the process, whatever thread was running) and the guardian's pidfd
//!   becomes readable; either stops the job: SIGTERM to the tree, SIGKILL after
//!   `kill_grace`. The spawner's end changes nothing for a shim (it dies with the guardian,
//!   PR_SET_PDEATHSIG, and a killed spawner is started again at the next run).
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
//! over the control pipe, a signalfd and the guardian's pidfd. It deliberately does not know about the database,
//! the run's verdict or its output (the guardian reads the output pipe itself).

mod client;
mod process;
mod protocol;
mod shell;
mod spawner;

pub(crate) use client::{Control, launch, replace_spawner};
pub(crate) use protocol::Report;
pub use protocol::SUBCOMMAND;
pub use spawner::main;

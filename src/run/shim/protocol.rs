//! The run shim's protocol with the guardian: the arguments on its command line, the job
//! on its fd 4, the report lines on its fd 3, and the file descriptors and limits both sides
//! agree on. Owns the wording of each report; does not start anything (`client`) nor act on
//! it (`process`).

use std::os::fd::OwnedFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The hidden subcommand that runs the shim spawner, whose children are the shims
/// (`src/main.rs` dispatches it before parsing).
pub const SUBCOMMAND: &str = "__run-shim";
/// The spawner's end of its socket to the guardian.
pub(super) const SOCKET_FD: i32 = 3;
/// How many descriptors come with each run: control, output, reports, job.
pub(super) const CONTROL_FDS: usize = 4;
/// The most a run's [`Args`] may take as JSON (supplementary groups make it grow): well
/// within a socket's default send buffer, so a message is never split or refused.
pub(super) const MAX_ARGS_BYTES: usize = 128 << 10;
/// The file descriptor the shim writes its reports to.
pub(super) const REPORT_FD: i32 = 3;
/// The file descriptor the shim reads the job from ([`Job`], JSON).
pub(super) const JOB_FD: i32 = 4;
/// The guardian's pidfd in the shim, when the kernel has pidfds: readable once the
/// guardian has exited.
pub(super) const GUARDIAN_FD: i32 = 5;

/// A connected pair of SOCK_SEQPACKET sockets (close-on-exec): one message per send, whole,
/// with its descriptors; the guardian's to its spawner, and the spawner's to each shim.
pub(super) fn socket_pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
}

/// Now on CLOCK_MONOTONIC, in nanoseconds: one clock for every process of the host.
pub(super) fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The most the shim reads from [`JOB_FD`]: more than any command and environment exec
/// accepts (see `launch::spec`), so reaching it means something else is wrong.
pub(super) const MAX_JOB_BYTES: u64 = 64 << 20;
/// How often the shim looks for new descendants while it is stopping the tree.
pub(super) const SCAN: Duration = Duration::from_millis(25);
/// How long the shim waits after SIGKILL for processes that do not die (uninterruptible
/// sleep) before it reports them and exits.
pub(super) const GIVE_UP: Duration = Duration::from_secs(5);

/// What the guardian tells the shim through the spawner, as JSON: only what the guardian
/// decided, nothing a job row says verbatim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Args {
    /// (uid, gid, supplementary groups) to switch to; None: stay who the guardian is.
    pub(super) user: Option<(u32, u32, Vec<u32>)>,
    pub(super) kill_grace_ms: u64,
    /// The watchdog's first deadline, on the host's CLOCK_MONOTONIC (nanoseconds): an
    /// instant, not a delay, so that time the message spent waiting for the spawner does not
    /// push it past the guardian's lease.
    pub(super) watchdog_at_ns: u64,
}

/// What the job row says, handed to the shim on [`JOB_FD`] and applied to the shell only,
/// after the switch of user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Job {
    pub(super) command: String,
    pub(super) workdir: String,
    /// The user's name and the host's, for messages.
    pub(super) user_name: String,
    pub(super) host: String,
    /// The shell's whole environment.
    pub(super) env: Vec<(String, String)>,
}

/// What the shim reports about the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// The shell runs with this pid (also its process group and session id), since `at`
    /// (microseconds since the Unix epoch, the shim's clock once the shell's `exec` had
    /// succeeded; None from a report without it).
    Started {
        pid: u32,
        at: Option<i64>,
    },
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
    pub(super) fn line(&self) -> String {
        match self {
            Report::Started { pid, at: Some(at) } => format!("started {pid} {at}\n"),
            Report::Started { pid, at: None } => format!("started {pid}\n"),
            Report::Error(why) => format!("error {}\n", why.replace('\n', " ")),
            Report::Exited(code) => format!("exited {code}\n"),
            Report::Signaled(sig) => format!("signaled {sig}\n"),
            Report::Unresponsive => "unresponsive\n".into(),
            Report::Survivors => "survivors\n".into(),
        }
    }

    pub(super) fn parse(line: &str) -> Option<Report> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        Some(match word {
            "started" => {
                let (pid, at) = rest.split_once(' ').unwrap_or((rest, ""));
                Report::Started {
                    pid: pid.parse().ok()?,
                    at: if at.is_empty() {
                        None
                    } else {
                        Some(at.parse().ok()?)
                    },
                }
            }
            "error" => Report::Error(rest.to_string()),
            "exited" => Report::Exited(rest.parse().ok()?),
            "signaled" => Report::Signaled(rest.parse().ok()?),
            "unresponsive" => Report::Unresponsive,
            "survivors" => Report::Survivors,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back() {
        for r in [
            Report::Started { pid: 42, at: None },
            Report::Started {
                pid: 42,
                at: Some(1_796_000_000_000_000),
            },
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

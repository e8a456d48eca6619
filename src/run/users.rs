//! Unix identities: who a run executes as, and whether this host allows it.
//!
//! Owns the host-side policy (README: "Security"): a run executes as its job's `run_as`, or the
//! guardian's `default_user` when that is NULL; a user other than `default_user` must be in
//! `allowed_users`; a guardian running as root switches to the user with its supplementary
//! groups, one running as anybody else can only run jobs as itself. Nothing runs as root
//! unless `root` is named in `default_user` or `allowed_users`. Does not apply the identity:
//! the run shim's shell step switches to it (`run::shim::shell`: groups, gid, uid, then
//! workdir and `execve`).
//!
//! The lookup (getpwnam, getgrouplist) may ask LDAP or sssd and hang there; it runs on a
//! blocking thread with a bound ([`Policy::resolve_bounded`]) so that a hung user database
//! fails the run (a retry may help) instead of blocking an async worker and, with it, the
//! guardian's heartbeat. What the user database answered is kept for [`REMEMBER`] (as nscd
//! keeps it, for much longer): a guardian starting a hundred runs a second as one user asks
//! once, not a hundred times, and without a blocking thread. Only answers are kept: a user
//! that did not exist, or a lookup that failed, is asked again at the next run. The policy
//! (`default_user`, `allowed_users`, root) is applied at every run.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::unistd::{Uid, User, getgrouplist};

/// A resolved identity for one run.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    /// The user's home, or `/` when it has none (cron's and systemd's fallback).
    pub home: String,
    /// Credentials to switch to; None when the guardian already is this user.
    pub switch: Option<Switch>,
}

#[derive(Debug, Clone)]
pub struct Switch {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// The policy a guardian applies, from its config.
#[derive(Debug, Clone)]
pub struct Policy {
    pub host: String,
    pub default_user: String,
    pub allowed_users: Vec<String>,
    /// How long a lookup in the user database may take ([`lookup_limit`]).
    pub lookup_limit: Duration,
}

/// The bound on one user lookup: well within the lease (the run is claimed and must start or
/// fail before anybody wonders), at most 10 s, at least 1 s.
pub fn lookup_limit(lease: Duration, heartbeat_interval: Duration) -> Duration {
    lease
        .saturating_sub(heartbeat_interval)
        .clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// A resolution that failed: the sentence for the run, and whether a retry cannot help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub error: String,
    pub final_: bool,
}

/// How long an answer of the user database is used for later runs: a user removed from the
/// host, or given other groups, is seen by runs starting this much later at most.
pub const REMEMBER: Duration = Duration::from_secs(5);

/// What the user database said of a user: uid, gid, home, supplementary groups (when the
/// guardian is root), and when.
#[derive(Debug, Clone)]
struct Answer {
    user: User,
    groups: Option<Vec<libc::gid_t>>,
    at: std::time::Instant,
}

/// The answers kept, by user name.
static ANSWERS: std::sync::Mutex<Option<HashMap<String, Answer>>> = std::sync::Mutex::new(None);

/// The fresh answer for `name`, if one is kept.
fn remembered(name: &str) -> Option<Answer> {
    let answers = ANSWERS.lock().unwrap_or_else(|p| p.into_inner());
    answers
        .as_ref()?
        .get(name)
        .filter(|a| a.at.elapsed() < REMEMBER)
        .cloned()
}

fn remember(name: &str, answer: Answer) {
    let mut answers = ANSWERS.lock().unwrap_or_else(|p| p.into_inner());
    let answers = answers.get_or_insert_with(HashMap::new);
    answers.retain(|_, a| a.at.elapsed() < REMEMBER);
    answers.insert(name.to_string(), answer);
}

/// How many lookups may be outstanding at once (most of them hung) before new ones are
/// refused without a thread: hung threads must not fill the blocking pool the spool writes
/// its results through.
const MAX_LOOKUPS: usize = 16;

/// The lookups outstanding, hung ones included (a thread is blocked until NSS answers).
static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

/// Runs the blocking `lookup` on tokio's blocking pool and waits at most `limit` for it:
/// None when it took longer (its thread stays blocked until the call returns; nothing waits
/// for it), panicked, or `max` lookups counted in `outstanding` are still running. Never
/// blocks the calling async worker.
pub async fn bounded<T: Send + 'static>(
    limit: Duration,
    outstanding: &'static AtomicUsize,
    max: usize,
    lookup: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if outstanding.fetch_add(1, Ordering::SeqCst) >= max {
        outstanding.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let counted = move || {
        let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(lookup));
        outstanding.fetch_sub(1, Ordering::SeqCst);
        value.ok()
    };
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(counted)).await {
        Ok(Ok(value)) => value,
        Ok(Err(_)) | Err(_) => None,
    }
}

impl Policy {
    /// [`Policy::resolve`] on a blocking thread, bounded by `lookup_limit`. A lookup that does
    /// not answer in time fails the run with a retry allowed: the user database may be back.
    pub async fn resolve_bounded(&self, run_as: Option<&str>) -> Result<Identity, Unresolved> {
        let name = run_as.unwrap_or(&self.default_user);
        if let Some(answer) = remembered(name) {
            return self
                .identity(name, answer)
                .map_err(|(error, final_)| Unresolved { error, final_ });
        }
        let policy = self.clone();
        let name = run_as.map(str::to_string);
        let limit = self.lookup_limit;
        let lookup = move || {
            test_hang();
            policy.resolve(name.as_deref())
        };
        match bounded(limit, &LOOKUPS, MAX_LOOKUPS, lookup).await {
            Some(resolved) => resolved,
            None => Err(Unresolved {
                error: format!(
                    "looking up user '{}' on host {} took more than {} s: the host's user database (NSS: files, LDAP, sssd) does not answer; check it there (the run is retried if the job has retries left)",
                    run_as.unwrap_or(&self.default_user),
                    self.host,
                    limit.as_secs_f64()
                ),
                final_: false,
            }),
        }
    }

    /// Resolves the identity of a run whose job asks for `run_as`. The error is the sentence
    /// recorded on the run; it is final (retrying cannot help) unless the user database
    /// failed to answer (an error from NSS, say sssd with its LDAP server away).
    pub fn resolve(&self, run_as: Option<&str>) -> Result<Identity, Unresolved> {
        self.resolve_inner(run_as)
            .map_err(|(error, final_)| Unresolved { error, final_ })
    }

    fn resolve_inner(&self, run_as: Option<&str>) -> Result<Identity, (String, bool)> {
        let name = run_as.unwrap_or(&self.default_user);
        self.allowed(name)?;
        let answer = self.ask(name)?;
        remember(name, answer.clone());
        self.identity(name, answer)
    }

    /// The host's policy: `name` is the default user or an allowed one.
    fn allowed(&self, name: &str) -> Result<(), (String, bool)> {
        if name != self.default_user && !self.allowed_users.iter().any(|u| u == name) {
            return Err((
                format!(
                    "user '{name}' is not allowed on host {}: add it to allowed_users in that host's guardian config, or change the job's run_as",
                    self.host
                ),
                true,
            ));
        }
        Ok(())
    }

    /// The user database's answer for `name` (blocking: NSS).
    fn ask(&self, name: &str) -> Result<Answer, (String, bool)> {
        let refused = |error: String| (error, true);
        let unanswered = |error: String| (error, false);
        let user = match User::from_name(name) {
            Ok(Some(u)) => u,
            Ok(None) => {
                return Err(refused(format!(
                    "user '{name}' does not exist on host {}",
                    self.host
                )));
            }
            Err(e) => {
                return Err(unanswered(format!(
                    "cannot look up user '{name}' on host {}: {e} (the run is retried if the job has retries left)",
                    self.host
                )));
            }
        };
        let groups = if Uid::effective().is_root() {
            let cname =
                CString::new(name).map_err(|_| refused(format!("bad user name '{name}'")))?;
            let groups = getgrouplist(&cname, user.gid).map_err(|e| {
                unanswered(format!(
                    "cannot read the groups of user '{name}' on host {}: {e} (the run is retried if the job has retries left)",
                    self.host
                ))
            })?;
            Some(groups.iter().map(|g| g.as_raw()).collect())
        } else {
            None
        };
        Ok(Answer {
            user,
            groups,
            at: std::time::Instant::now(),
        })
    }

    /// The identity of a run as `name`, from the user database's answer, under the policy.
    fn identity(&self, name: &str, answer: Answer) -> Result<Identity, (String, bool)> {
        self.allowed(name)?;
        let user = answer.user;
        let home = if Path::new(&user.dir).is_dir() {
            user.dir.to_string_lossy().into_owned()
        } else {
            "/".to_string()
        };
        let me = Uid::effective();
        let switch = match answer.groups {
            Some(groups) if me.is_root() => Some(Switch {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                groups,
            }),
            _ if user.uid == me => None,
            _ => {
                return Err((
                    format!(
                        "the guardian on host {} does not run as root and cannot switch to user '{name}': run the job as the guardian's user or run the guardian as root",
                        self.host
                    ),
                    true,
                ));
            }
        };
        Ok(Identity {
            name: name.to_string(),
            home,
            switch,
        })
    }
}

/// Debug builds' fault hook (`SISY_TEST_FAULT=user-lookup:hang`, see `service::fault`): the
/// lookup blocks its thread, as a user database that never answers would. No real trigger
/// makes NSS hang without changing the host's `nsswitch.conf`.
fn test_hang() {
    if cfg!(debug_assertions)
        && std::env::var("SISY_TEST_FAULT").is_ok_and(|f| f == "user-lookup:hang")
    {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the user this process runs as (for defaults and messages).
    fn current_user_name() -> String {
        match User::from_uid(Uid::effective()) {
            Ok(Some(u)) => u.name,
            _ => Uid::effective().to_string(),
        }
    }

    fn policy(default_user: &str, allowed: &[&str]) -> Policy {
        Policy {
            host: "h1".into(),
            default_user: default_user.into(),
            allowed_users: allowed.iter().map(|u| u.to_string()).collect(),
            lookup_limit: Duration::from_secs(10),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lookup_that_hangs_is_abandoned_at_its_bound_without_blocking_the_runtime() {
        // One worker thread: had the lookup run on it, the ticker below could not tick.
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let ticks = tokio::spawn(async {
            let mut n = 0u32;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                n += 1;
                if n == 10 {
                    return n;
                }
            }
        });
        let start = std::time::Instant::now();
        static OUTSTANDING: AtomicUsize = AtomicUsize::new(0);
        let limit = Duration::from_millis(500);
        let result = bounded(limit, &OUTSTANDING, 2, move || hung.recv().ok()).await;
        assert_eq!(result, None, "the hung lookup gave an answer");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(ticks.is_finished(), "the runtime was blocked by the lookup");
        // One more may hang; then none is started until one of them returns.
        let (release2, hung2) = std::sync::mpsc::channel::<()>();
        assert_eq!(
            bounded(limit, &OUTSTANDING, 2, move || hung2.recv().ok()).await,
            None
        );
        let start = std::time::Instant::now();
        assert_eq!(bounded(limit, &OUTSTANDING, 2, || 7).await, None);
        assert!(start.elapsed() < limit, "a third thread was started");
        drop((release, release2));
        let start = std::time::Instant::now();
        while OUTSTANDING.load(Ordering::SeqCst) > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the released lookups never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let long = Duration::from_secs(5);
        assert_eq!(bounded(long, &OUTSTANDING, 2, || 7).await, Some(7));
    }

    #[test]
    fn the_lookup_bound_stays_within_the_lease() {
        let s = Duration::from_secs;
        assert_eq!(lookup_limit(s(30), s(10)), s(10));
        assert_eq!(lookup_limit(s(6), s(2)), s(4));
        assert_eq!(lookup_limit(s(2), s(2)), s(1));
    }

    #[test]
    fn only_the_default_user_and_the_allowed_users_may_run() {
        let me = current_user_name();
        let only_me = policy(&me, &[]);
        assert_eq!(only_me.resolve(None).unwrap().name, me, "default_user");
        assert_eq!(only_me.resolve(Some(&me)).unwrap().name, me);
        for other in ["root", "backup", ""] {
            if other == me {
                continue;
            }
            let err = only_me.resolve(Some(other)).unwrap_err();
            assert_eq!(
                err,
                Unresolved {
                    error: format!(
                        "user '{other}' is not allowed on host h1: add it to allowed_users in \
                         that host's guardian config, or change the job's run_as"
                    ),
                    final_: true,
                }
            );
        }
        let err = policy("cron", &[&me])
            .resolve(Some("no-such-user-x"))
            .unwrap_err();
        assert!(
            err.error.contains("is not allowed") && err.final_,
            "{err:?}"
        );
        let missing = policy("no-such-user-x", &[]).resolve(None).unwrap_err();
        assert!(
            missing.error.contains("does not exist") && missing.final_,
            "{missing:?}"
        );
        let named = policy("no-such-user-x", &[&me]);
        assert_eq!(named.resolve(Some(&me)).unwrap().name, me, "allowed_users");
    }
}

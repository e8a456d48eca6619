//! Unix identities: who a run executes as, and whether this host allows it.
//!
//! Owns the host-side policy (README: "Security"): a run executes as its job's `run_as`, or the
//! guardian's `default_user` when that is NULL; a user other than `default_user` must be in
//! `allowed_users`; a guardian running as root switches to the user with its supplementary
//! groups, one running as anybody else can only run jobs as itself. Nothing runs as root
//! unless `root` is named in `default_user` or `allowed_users`. Does not apply the identity:
//! the run shim's shell step switches to it (`run::shim::shell`: groups, gid, uid, then
//! workdir and `execve`).

use std::ffi::CString;
use std::path::Path;

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
}

impl Policy {
    /// Resolves the identity of a run whose job asks for `run_as`. The error is the sentence
    /// recorded on the run; such a failure is not retried (retrying cannot help).
    pub fn resolve(&self, run_as: Option<&str>) -> Result<Identity, String> {
        let name = run_as.unwrap_or(&self.default_user);
        if name != self.default_user && !self.allowed_users.iter().any(|u| u == name) {
            return Err(format!(
                "user '{name}' is not allowed on host {}: add it to allowed_users in that host's guardian config, or change the job's run_as",
                self.host
            ));
        }
        let user = match User::from_name(name) {
            Ok(Some(u)) => u,
            Ok(None) => {
                return Err(format!(
                    "user '{name}' does not exist on host {}",
                    self.host
                ));
            }
            Err(e) => {
                return Err(format!(
                    "cannot look up user '{name}' on host {}: {e}",
                    self.host
                ));
            }
        };
        let home = if Path::new(&user.dir).is_dir() {
            user.dir.to_string_lossy().into_owned()
        } else {
            "/".to_string()
        };
        let me = Uid::effective();
        let switch = if me.is_root() {
            let cname = CString::new(name).map_err(|_| format!("bad user name '{name}'"))?;
            let groups = getgrouplist(&cname, user.gid).map_err(|e| {
                format!(
                    "cannot read the groups of user '{name}' on host {}: {e}",
                    self.host
                )
            })?;
            Some(Switch {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                groups: groups.iter().map(|g| g.as_raw()).collect(),
            })
        } else if user.uid == me {
            None
        } else {
            return Err(format!(
                "the guardian on host {} does not run as root and cannot switch to user '{name}': run the job as the guardian's user or run the guardian as root",
                self.host
            ));
        };
        Ok(Identity {
            name: name.to_string(),
            home,
            switch,
        })
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
        }
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
                format!(
                    "user '{other}' is not allowed on host h1: add it to allowed_users in that \
                     host's guardian config, or change the job's run_as"
                )
            );
        }
        let err = policy("cron", &[&me])
            .resolve(Some("no-such-user-x"))
            .unwrap_err();
        assert!(err.contains("is not allowed"), "{err}");
        let named = policy("no-such-user-x", &[&me]);
        assert_eq!(named.resolve(Some(&me)).unwrap().name, me, "allowed_users");
    }
}

//! Whether the guardian may trust its config file: it decides what this host runs and as
//! whom, so nobody but root (or the guardian's own user) may be able to change it, neither
//! by editing the file nor by replacing it in a directory they can write to.
//!
//! Checked every time the file is read (start-up and each SIGHUP reload). Refused: a file
//! owned by another user, or writable by every user or by a group other than root's; a
//! directory on its way from `/` (of the path given and of the file a symlink leads to)
//! owned by another user, or writable by others without the sticky bit (with it, as in
//! `/tmp`, others can add entries but not replace root's).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Result, bail};

/// Refuses `path` (the config file) when a user other than root or this process's could
/// change what it says. A file that does not exist passes: the loader reports it.
pub fn check(path: &Path) -> Result<()> {
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(&real) else {
        return Ok(());
    };
    let shown = path.display();
    let me = nix::unistd::Uid::effective().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == me;
    if !trusted(meta.uid()) {
        bail!(
            "{shown} is owned by {}, who could then make this host run anything: run `chown root {shown}`",
            owner(meta.uid())
        );
    }
    if meta.mode() & 0o002 != 0 {
        bail!(
            "{shown} is writable by every user, who could then make this host run anything: run `chmod o-w {shown}`"
        );
    }
    if meta.mode() & 0o020 != 0 && meta.gid() != 0 {
        bail!(
            "{shown} is writable by its group (gid {}), whose members could then make this host run anything: run `chmod g-w {shown}`",
            meta.gid()
        );
    }
    // The directories of the path as given (a symlink may sit there) and of its target.
    let given_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    for start in [
        std::fs::canonicalize(given_dir).ok(),
        real.parent().map(Into::into),
    ]
    .into_iter()
    .flatten()
    {
        for dir in start.ancestors() {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    for dir in dirs {
        check_dir(&dir, &shown.to_string(), trusted)?;
    }
    Ok(())
}

/// A directory above the config file: nobody but a trusted user may replace its entries.
fn check_dir(dir: &Path, file: &str, trusted: impl Fn(u32) -> bool) -> Result<()> {
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let shown = dir.display();
    if !trusted(meta.uid()) {
        bail!(
            "{shown}, a directory holding the config file {file}, is owned by {}, who could replace the file and make this host run anything: run `chown root {shown}` or keep the config elsewhere",
            owner(meta.uid())
        );
    }
    let sticky = meta.mode() & 0o1000 != 0;
    if !sticky && meta.mode() & 0o002 != 0 {
        bail!(
            "{shown}, a directory holding the config file {file}, is writable by every user, who could replace the file and make this host run anything: run `chmod o-w {shown}`"
        );
    }
    if !sticky && meta.mode() & 0o020 != 0 && meta.gid() != 0 {
        bail!(
            "{shown}, a directory holding the config file {file}, is writable by its group (gid {}), whose members could replace the file and make this host run anything: run `chmod g-w {shown}`",
            meta.gid()
        );
    }
    Ok(())
}

/// A user for messages: its name and uid, or the uid alone.
fn owner(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuardianConfig;

    fn nobody() -> Option<nix::unistd::Uid> {
        if !nix::unistd::Uid::effective().is_root() {
            return None; // chown needs root; the integration tests run as root
        }
        Some(nix::unistd::User::from_name("nobody").ok()??.uid)
    }

    #[test]
    fn loading_refuses_what_another_user_could_change_so_a_reload_does_too() {
        let Some(nobody) = nobody() else { return };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("guardian.toml");
        std::fs::write(&file, "host_name = \"h\"\n").unwrap();
        assert!(check(&file).is_ok());
        nix::unistd::chown(&file, Some(nobody), None).unwrap();
        let err = GuardianConfig::load(Some(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("owned by nobody") && err.contains("chown root"),
            "{err}"
        );
    }

    #[test]
    fn a_symlink_is_judged_by_where_it_leads_and_where_it_sits() {
        let Some(nobody) = nobody() else { return };
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join("real.toml"), "").unwrap();
        nix::unistd::chown(&theirs, Some(nobody), None).unwrap();
        let link = dir.path().join("guardian.toml");
        std::os::unix::fs::symlink(theirs.join("real.toml"), &link).unwrap();
        let err = check(&link).unwrap_err().to_string();
        assert!(
            err.contains("theirs") && err.contains("owned by nobody"),
            "{err}"
        );

        std::fs::write(dir.path().join("mine.toml"), "").unwrap();
        let link = theirs.join("link.toml");
        std::os::unix::fs::symlink(dir.path().join("mine.toml"), &link).unwrap();
        let err = check(&link).unwrap_err().to_string();
        assert!(
            err.contains("theirs") && err.contains("owned by nobody"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_left_to_the_loader() {
        assert!(check(Path::new("/nonexistent/sisy/guardian.toml")).is_ok());
    }
}

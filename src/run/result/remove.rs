//! Removing a directory tree a job wrote (its run directory, a previous process's room),
//! whatever shape the job gave it, as root.
//!
//! `std::fs::remove_dir_all` recurses once per level and holds a descriptor per level: a
//! job that nests directories 30,000 deep (cheap: `mkdir -p` then `mv` the tree into its own
//! bottom) overflows the stack of the thread that removes it, and the guardian aborts. This
//! removal never recurses and holds two descriptors at most: a directory that is not empty
//! is dissolved by moving its entries up one level (`renameat2` with `RENAME_NOREPLACE`,
//! both ends given as descriptors), so each directory is moved at most once and the work
//! follows the number of entries, not their depth. Every step is relative to a descriptor
//! opened with `O_NOFOLLOW`: a symbolic link is removed, never followed, and nothing outside
//! the tree is touched (a hard link is only unlinked).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Names read from a directory per listing: a directory of millions of entries costs
/// memory for this many names at a time, not for all of them.
const BATCH: usize = 1024;

/// The most listings one removal makes: a same-user process that keeps filling the tree
/// cannot hold a thread of the guardian for ever (a billion entries is far beyond a job).
const MAX_LISTINGS: u64 = 1 << 20;

/// Removes `path` and everything below it; a missing path is no error.
pub fn tree(path: &Path) -> io::Result<()> {
    let top = match open_dir(None, path) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        // Not a directory (or a link to one): the name alone goes.
        Err(Errno::ENOTDIR | Errno::ELOOP) => return std::fs::remove_file(path),
        Err(e) => return Err(e.into()),
    };
    empty(&top)?;
    drop(top);
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Empties the directory `top`: files go at once, directories are removed when empty and
/// otherwise dissolved into `top` (see the module doc), until a listing finds nothing.
fn empty(top: &OwnedFd) -> io::Result<()> {
    let (mut moved, mut listings) = (0u64, 0u64);
    let mut list = |dir: &OwnedFd| {
        listings += 1;
        if listings > MAX_LISTINGS {
            return Err(io::Error::other(
                "the tree keeps growing while it is removed",
            ));
        }
        list(dir)
    };
    loop {
        let names = list(top)?;
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            if remove_entry(top, &name)? {
                continue;
            }
            let child = match open_dir(Some(top), name.as_c_str()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            // Keep taking the child's entries until it is empty: a listing is a batch.
            loop {
                let inner = list(&child)?;
                if inner.is_empty() {
                    break;
                }
                for entry in inner {
                    if !remove_entry(&child, &entry)? {
                        lift(&child, &entry, top, &mut moved)?;
                    }
                }
            }
            drop(child);
            match unlinkat(top, name.as_c_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT | Errno::ENOTEMPTY | Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Removes the entry `name` of `dir` if it is not a directory or an empty one; false when it
/// is a directory that holds something.
fn remove_entry(dir: &OwnedFd, name: &CStr) -> io::Result<bool> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(true),
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(e) => return Err(e.into()),
    }
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Moves the directory `name` of `from` up into `to` under a fresh name.
fn lift(from: &OwnedFd, name: &CStr, to: &OwnedFd, moved: &mut u64) -> io::Result<()> {
    loop {
        *moved += 1;
        let new = CString::new(format!(".sisy-removing-{moved}")).expect("no NUL in a number");
        match renameat2(
            from,
            name,
            to,
            new.as_c_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Opens a directory without following a symbolic link: `path` relative to `at`, or as it is.
fn open_dir<P: ?Sized + nix::NixPath>(at: Option<&OwnedFd>, path: &P) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match at {
        Some(dir) => openat(dir, path, flags, Mode::empty()),
        None => openat(nix::fcntl::AT_FDCWD, path, flags, Mode::empty()),
    }
}

/// Up to [`BATCH`] names of `dir`, without `.` and `..`.
fn list(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut listing = Dir::from_fd(open_dir(Some(dir), c".")?)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
            if names.len() == BATCH {
                break;
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_wide_tree_with_links_goes_and_what_the_links_point_to_stays() {
        let scratch = tempfile::tempdir().unwrap();
        let outside = scratch.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let top = scratch.path().join("top");
        // 5,000 levels, built by moving the tree into its own bottom (paths stay short).
        std::fs::create_dir_all(top.join("t")).unwrap();
        let chain: std::path::PathBuf = std::iter::repeat_n("d", 500).collect();
        for _ in 0..10 {
            std::fs::create_dir_all(top.join("n").join(&chain)).unwrap();
            std::fs::rename(top.join("t"), top.join("n").join(&chain).join("t")).unwrap();
            std::fs::rename(top.join("n"), top.join("t")).unwrap();
        }
        for i in 0..(BATCH + 10) {
            std::fs::write(top.join(format!("f{i}")), "").unwrap();
        }
        std::os::unix::fs::symlink(&outside, top.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, top.join("t/d/link")).unwrap();
        std::fs::hard_link(outside.join("keep"), top.join("t/d/d/hard")).unwrap();
        // A thread with a small stack: the removal must not need one per level.
        let t = top.clone();
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || tree(&t).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(!top.exists());
        assert_eq!(std::fs::read_to_string(outside.join("keep")).unwrap(), "x");
        tree(&top).unwrap();
        std::os::unix::fs::symlink(&outside, &top).unwrap();
        tree(&top).unwrap();
        assert!(outside.join("keep").exists() && std::fs::symlink_metadata(&top).is_err());
    }
}

//! The `SISY_RESULT` file (SPEC §7 "Results between jobs"): the place a job may write its
//! result, and reading it back safely once the job's processes are gone.
//!
//! The job is not trusted and the guardian may be root, so the file is read only where the
//! job cannot redirect the read to another file:
//!
//! ```text
//!  $TMPDIR/sisy-results-XXXXXX/      the room: made fresh at start-up (mkdtemp), the
//!  │                                 guardian's own, mode 0711 (enter, not list nor write)
//!  └── <n>/                          one per running run, owned by the run's user, mode
//!      └── result                    0700: the job cannot rename or replace it (the room
//!                                    is not its)
//! ```
//! A run directory the job left empty (once its result file is read and removed), still a
//! directory of that user with mode 0700, is kept for the next run of the same user: making
//! and removing a directory per run cost a busy guardian more than anything else it did on
//! its own (allocating and freeing an inode; on ext4 a scan past recently freed ones). One
//! the job left anything in, or changed, is removed as before. A directory is never handed
//! to another user's run.
//! The result is read with `O_NOFOLLOW | O_NONBLOCK` after an `lstat`, and only if it is a
//! regular file owned by the run's user (a symbolic link, a hard link to someone else's
//! file, a FIFO, a directory are refused with a sentence and never opened or read), at most
//! [`LIMIT`] + 1 bytes of it; then the run's directory is removed. The room of a previous
//! guardian process (its path is kept in `state_dir/results-room`) is removed at start-up.
//! Removing is [`remove`]'s: a job may leave any tree beside its result.
//! What was read becomes [`Stored`]: the JSON text for `sisy.runs.result` (always something
//! PostgreSQL's jsonb accepts: a string without NUL, a depth serde_json could read), and a
//! note for the run's `error`. Does not write the database (the recorder does).

use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod remove;

/// The largest result a run may leave: 64 KiB.
pub const LIMIT: u64 = 64 * 1024;

/// How the name of a room begins.
const PREFIX: &str = "sisy-results-";

/// The name of the result file in a run's directory.
const FILE: &str = "result";

/// The most emptied run directories a room keeps for later runs.
const KEPT: usize = 256;

/// What a run's result file gave, as the recorder writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The value for `sisy.runs.result`, as JSON text; None for NULL.
    pub json: Option<String>,
    /// A sentence for the run's `error` (text stored as a string, a refused file, the size).
    pub note: Option<String>,
    /// Larger than [`LIMIT`]: the run fails.
    pub too_big: bool,
}

impl Stored {
    fn note(note: String) -> Stored {
        Stored {
            note: Some(note),
            ..Stored::default()
        }
    }
}

/// The room of the run directories (see the module doc).
#[derive(Debug)]
pub struct Room {
    /// The current room; made again if it went away (a temp cleaner removes old directories).
    dir: Mutex<PathBuf>,
    /// `state_dir/results-room`: the room's path, for the next start's clean-up.
    record: PathBuf,
    /// Run directories left empty by their run, for the next run of the same owner.
    kept: Mutex<Vec<RunDir>>,
    /// How many run directories this room has made: the next one's name.
    made: AtomicU64,
}

/// A run directory and its owner (uid, gid; None: the guardian's own user).
#[derive(Debug)]
struct RunDir {
    dir: PathBuf,
    owner: Option<(u32, u32)>,
}

/// A run's directory, from its preparation to the reading of its result: the job's
/// `SISY_RESULT` is [`Place::path`].
#[derive(Debug)]
pub struct Place {
    room: Arc<Room>,
    run_dir: RunDir,
}

impl Room {
    /// At start-up: removes the room a previous guardian process left (with whatever its
    /// jobs wrote there) and makes a fresh one in the system's temporary directory.
    pub fn open(state_dir: &Path) -> io::Result<Room> {
        let record = state_dir.join("results-room");
        if let Ok(previous) = std::fs::read_to_string(&record) {
            let previous = PathBuf::from(previous.trim());
            // Only what `make` names: a damaged record must not point the removal elsewhere.
            let named = previous.is_absolute()
                && previous
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(PREFIX));
            if named
                && ours(&previous)
                && let Err(e) = remove::tree(&previous)
            {
                tracing::warn!(path = %previous.display(), error = %e, "cannot remove the result directories a previous guardian process left");
            }
        }
        let dir = make(&record)?;
        Ok(Room {
            dir: Mutex::new(dir),
            record,
            kept: Mutex::new(Vec::new()),
            made: AtomicU64::new(0),
        })
    }

    /// A directory for a run of `owner` (uid, gid; None: the guardian's own user): one kept
    /// from an earlier run of the same owner, else a new one.
    pub fn prepare(self: &Arc<Self>, owner: Option<(u32, u32)>) -> io::Result<Place> {
        let run_dir = match self.reuse(owner) {
            Some(kept) => kept,
            None => self.make_run_dir(owner)?,
        };
        Ok(Place {
            room: self.clone(),
            run_dir,
        })
    }

    /// [`Room::prepare`] on the blocking pool.
    pub async fn prepare_off_runtime(
        self: &Arc<Self>,
        owner: Option<(u32, u32)>,
    ) -> io::Result<Place> {
        let room = self.clone();
        tokio::task::spawn_blocking(move || room.prepare(owner))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    /// A kept directory of `owner` that is still as it was left (anything else is removed).
    fn reuse(&self, owner: Option<(u32, u32)>) -> Option<RunDir> {
        loop {
            let kept = {
                let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
                let at = kept.iter().rposition(|k| k.owner == owner)?;
                kept.swap_remove(at)
            };
            if fit(&kept) {
                return Some(kept);
            }
            discard(&kept.dir);
        }
    }

    fn make_run_dir(&self, owner: Option<(u32, u32)>) -> io::Result<RunDir> {
        let room = {
            let mut dir = self.dir.lock().unwrap_or_else(|e| e.into_inner());
            if !ours(&dir) {
                *dir = make(&self.record)?;
                // Those kept were in the room that went away.
                self.kept.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            dir.clone()
        };
        let name = self.made.fetch_add(1, Ordering::Relaxed).to_string();
        let dir = room.join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(RunDir { dir, owner })
    }

    /// After the run (its processes are gone): keeps its directory for the next run of the
    /// same owner if the job left it empty and as it was made, else removes it.
    fn give_back(&self, run_dir: RunDir) {
        let result = run_dir.dir.join(FILE);
        let emptied = match std::fs::remove_file(&result) {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        let in_room = run_dir.dir.parent().is_some_and(|room| {
            room == self.dir.lock().unwrap_or_else(|e| e.into_inner()).as_path()
        });
        if emptied && in_room && fit(&run_dir) && is_empty(&run_dir.dir) {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < KEPT {
                kept.push(run_dir);
                return;
            }
        }
        discard(&run_dir.dir);
    }
}

impl Place {
    /// The run's result file: the job's `SISY_RESULT`.
    pub fn path(&self) -> PathBuf {
        self.run_dir.dir.join(FILE)
    }

    /// After the run: reads the result file, which must be the run's user's (see the module
    /// doc), then hands the directory back to the room.
    pub fn take(self) -> Stored {
        let uid = match self.run_dir.owner {
            Some((uid, _)) => uid,
            None => nix::unistd::geteuid().as_raw(),
        };
        let stored = match read(&self.path(), uid) {
            Ok(Some(bytes)) => interpret(&bytes),
            Ok(None) => Stored::default(),
            Err(stored) => stored,
        };
        self.room.give_back(self.run_dir);
        stored
    }

    /// [`Place::take`] on the blocking pool.
    pub async fn take_off_runtime(self) -> Stored {
        let path = self.path();
        tokio::task::spawn_blocking(move || self.take())
            .await
            .unwrap_or_else(|e| {
                Stored::note(format!(
                    "SISY_RESULT {} could not be read ({e}): nothing stored",
                    path.display()
                ))
            })
    }

    /// A run that never started: its directory goes back to the room.
    pub fn discard(self) {
        self.room.give_back(self.run_dir);
    }
}

/// Whether a run directory is still what was made for its owner: a directory (not a link
/// to one), the owner's, mode 0700 (a job that opened it to others gets a fresh one).
fn fit(run_dir: &RunDir) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(&run_dir.dir) else {
        return false;
    };
    let owned = match run_dir.owner {
        Some((uid, gid)) => (meta.uid(), meta.gid()) == (uid, gid),
        None => meta.uid() == nix::unistd::geteuid().as_raw(),
    };
    meta.is_dir() && owned && meta.mode() & 0o7777 == 0o700
}

/// Whether directory `dir` has no entry (false if it cannot be listed).
fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Makes a fresh room and records its path.
fn make(record: &Path) -> io::Result<PathBuf> {
    let template = std::env::temp_dir().join(format!("{PREFIX}XXXXXX"));
    let dir = nix::unistd::mkdtemp(&template).map_err(io::Error::from)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    std::fs::write(record, dir.as_os_str().as_encoded_bytes())?;
    Ok(dir)
}

/// Whether `dir` is a room this guardian's user made: a real directory (not a link to one)
/// owned by it. Anything else at that path is left alone.
fn ours(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw())
}

/// Removes a run directory and whatever the job left in it.
fn discard(dir: &Path) {
    if let Err(e) = remove::tree(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %dir.display(), error = %e, "cannot remove a run's result directory");
    }
}

/// The file's bytes (at most `LIMIT + 1`), None when there is none, or the refusal.
fn read(path: &Path, uid: u32) -> Result<Option<Vec<u8>>, Stored> {
    let refuse = |what: &str| {
        Stored::note(format!(
            "SISY_RESULT is {what}, not a regular file the job wrote: nothing stored (write the result into the file itself)"
        ))
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Stored::note(format!(
                "SISY_RESULT could not be read ({e}): nothing stored"
            )));
        }
    };
    let kind = meta.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        return Err(refuse(if kind.is_symlink() {
            "a symbolic link"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        }));
    }
    if meta.uid() != uid {
        return Err(refuse(&format!(
            "owned by uid {} instead of the job's user (uid {uid}: a hard link to another file?)",
            meta.uid()
        )));
    }
    if meta.len() > LIMIT {
        return Err(too_big(meta.len()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            Stored::note(format!(
                "SISY_RESULT could not be opened ({e}): nothing stored"
            ))
        })?;
    // The file opened must be the one looked at (nothing swapped it in between).
    let opened = file.metadata().map_err(|e| {
        Stored::note(format!(
            "SISY_RESULT could not be read ({e}): nothing stored"
        ))
    })?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) || !opened.is_file() {
        return Err(refuse(
            "a file that was replaced while the guardian opened it",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(LIMIT + 1).read_to_end(&mut bytes).map_err(|e| {
        Stored::note(format!(
            "SISY_RESULT could not be read ({e}): nothing stored"
        ))
    })?;
    if bytes.len() as u64 > LIMIT {
        return Err(too_big(opened.len().max(bytes.len() as u64)));
    }
    Ok(Some(bytes))
}

fn too_big(size: u64) -> Stored {
    Stored {
        json: None,
        note: Some(format!(
            "SISY_RESULT is {size} bytes, more than the 64 KiB ({LIMIT} bytes) a result may hold: write large data to a file and put its path in the result"
        )),
        too_big: true,
    }
}

/// The bytes of a result file as the value to store: JSON as the job wrote it (its numbers
/// keep their digits: `sisy.result_jsonb` stores it, and only a number jsonb cannot hold
/// makes it a string), anything else as a JSON string with a note; nothing (empty or blank).
pub fn interpret(bytes: &[u8]) -> Stored {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Stored::default();
    }
    let why = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(value) if !has_nul(&value) => {
            // Parsed JSON is UTF-8 throughout (serde refuses anything else).
            let text = std::str::from_utf8(bytes)
                .map_or_else(|_| value.to_string(), |t| t.trim_end().to_string());
            return Stored {
                json: Some(text),
                ..Stored::default()
            };
        }
        Ok(_) => {
            "SISY_RESULT holds a \\u0000 (NUL), which PostgreSQL's jsonb cannot store".to_string()
        }
        Err(e) => format!("SISY_RESULT was not JSON ({e})"),
    };
    // As the shell's $(…) does: the final newlines are the writer's, not the value's.
    let text = String::from_utf8_lossy(bytes).replace('\0', "");
    let text = text.trim_end_matches(['\n', '\r']);
    Stored {
        json: Some(serde_json::Value::String(text.to_string()).to_string()),
        note: Some(format!("{why}: stored as a JSON string")),
        too_big: false,
    }
}

/// Whether a NUL appears in any string or key of `value` (jsonb refuses `\u0000`).
fn has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_kept_text_becomes_a_string_and_blank_is_nothing() {
        let json = interpret(b"{\"rows\": 3}\n");
        assert_eq!(json.json.as_deref(), Some("{\"rows\": 3}"));
        let digits = interpret(b"[123456789012345678901234567890, 0.10000000000000000555]");
        assert_eq!(
            digits.json.as_deref(),
            Some("[123456789012345678901234567890, 0.10000000000000000555]")
        );
        assert_eq!(json.note, None);
        let text = interpret(b"hello\n");
        assert_eq!(text.json.as_deref(), Some("\"hello\""));
        assert!(text.note.unwrap().starts_with("SISY_RESULT was not JSON"));
        assert_eq!(interpret(b" \n"), Stored::default());
        let binary = interpret(b"a\0b\xff");
        assert_eq!(binary.json.as_deref(), Some("\"ab\u{FFFD}\""));
    }

    #[test]
    fn what_jsonb_refuses_is_stored_as_a_string() {
        let nul = interpret(br#"{"s": "a\u0000b"}"#);
        assert_eq!(nul.json.as_deref(), Some(r#""{\"s\": \"a\\u0000b\"}""#));
        assert!(nul.note.unwrap().contains("NUL"));
        let key = interpret(br#"{"a\u0000": 1}"#);
        assert!(key.note.is_some());
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let deep = interpret(deep.as_bytes());
        assert!(deep.note.unwrap().contains("recursion limit"));
        let surrogate = interpret(br#""\ud800""#);
        assert!(surrogate.note.is_some());
    }

    #[test]
    fn a_result_is_read_only_from_a_regular_file_of_the_jobs_user() {
        let dir = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let path = dir.path().join("run/result");
        std::fs::create_dir(dir.path().join("run")).unwrap();
        assert_eq!(read(&path, uid), Ok(None));
        std::fs::write(dir.path().join("other"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("other"), &path).unwrap();
        let refused = read(&path, uid).unwrap_err();
        assert!(refused.note.unwrap().contains("symbolic link"));
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read(&path, uid).unwrap_err().note.unwrap().contains("FIFO"));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "1").unwrap();
        assert!(
            read(&path, uid + 1)
                .unwrap_err()
                .note
                .unwrap()
                .contains("owned by")
        );
        assert_eq!(read(&path, uid), Ok(Some(b"1".to_vec())));
        std::fs::write(&path, vec![b'x'; LIMIT as usize + 1]).unwrap();
        let big = read(&path, uid).unwrap_err();
        assert!(big.too_big && big.note.unwrap().contains("65537 bytes"));
    }

    /// A room in a fresh state directory, and the room's own path.
    fn room() -> (tempfile::TempDir, Arc<Room>) {
        let state = tempfile::tempdir().unwrap();
        let room = Arc::new(Room::open(state.path()).unwrap());
        (state, room)
    }

    fn mode_of(dir: &Path) -> u32 {
        std::fs::symlink_metadata(dir).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_run_directory_left_empty_serves_the_next_run_of_its_owner() {
        let (_state, room) = room();
        let uid = nix::unistd::geteuid().as_raw();
        let first = room.prepare(None).unwrap();
        let path = first.path();
        std::fs::write(&path, "{\"n\": 1}").unwrap();
        assert_eq!(first.take().json.as_deref(), Some("{\"n\": 1}"));
        // Emptied (its result read and removed) and kept.
        let dir = path.parent().unwrap().to_path_buf();
        assert!(is_empty(&dir));
        let second = room.prepare(None).unwrap();
        assert_eq!(second.path(), path);
        // Not for another owner: a directory is never handed to another user's run.
        let other = room.prepare(Some((uid, 12345))).unwrap();
        assert_ne!(other.path().parent(), Some(dir.as_path()));
        assert_eq!(
            std::fs::symlink_metadata(other.path().parent().unwrap())
                .unwrap()
                .gid(),
            12345
        );
        assert_eq!(second.take(), Stored::default());
        other.discard();
    }

    #[test]
    fn a_run_directory_the_job_changed_is_removed_not_kept() {
        let (_state, room) = room();
        // Something left beside the result.
        let left = room.prepare(None).unwrap();
        let left_dir = left.path().parent().unwrap().to_path_buf();
        std::fs::write(left_dir.join("other"), "x").unwrap();
        left.take();
        assert!(!left_dir.exists());
        // Opened to others.
        let opened = room.prepare(None).unwrap();
        let opened_dir = opened.path().parent().unwrap().to_path_buf();
        std::fs::set_permissions(&opened_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        opened.take();
        assert!(!opened_dir.exists());
        // A directory where the result file should be.
        let odd = room.prepare(None).unwrap();
        let odd_dir = odd.path().parent().unwrap().to_path_buf();
        std::fs::create_dir(odd.path()).unwrap();
        assert!(odd.take().note.unwrap().contains("a directory"));
        assert!(!odd_dir.exists());
        // Each run got a fresh directory of its own, mode 0700.
        let fresh = room.prepare(None).unwrap();
        let fresh_dir = fresh.path().parent().unwrap().to_path_buf();
        assert!(![&left_dir, &opened_dir, &odd_dir].contains(&&fresh_dir));
        assert_eq!(mode_of(&fresh_dir), 0o700);
        assert!(is_empty(&fresh_dir));
    }

    #[test]
    fn a_kept_directory_changed_while_kept_is_not_handed_out() {
        let (_state, room) = room();
        let first = room.prepare(None).unwrap();
        let dir = first.path().parent().unwrap().to_path_buf();
        first.take();
        // A process of the same user that held on to it opens it to others meanwhile.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let next = room.prepare(None).unwrap();
        assert_ne!(next.path().parent(), Some(dir.as_path()));
        assert!(!dir.exists());
    }
}

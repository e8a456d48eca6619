//! The result spool: run results the database has not taken yet, one JSON file per run
//! under `state_dir/spool/`, so that a guardian restarted during a database outage loses
//! nothing.
//!
//! ```text
//!  run ends ─▶ write to the database ─ok─▶ done
//!                   │ fails
//!                   ▼
//!            spool/<run id>.json (write, fsync, rename) ─▶ retry with backoff ─ok─▶ remove
//!                   │ guardian restarts meanwhile
//!                   ▼
//!            next start: replayed before this host's unfinished runs are declared lost
//! ```
//! The happy path costs nothing: a result is spooled only when its first write fails. The
//! guardian calls the `*_off_runtime` forms, which do the file work on the blocking pool.
//! Does not own writing to the database (the recorder does) nor deciding the verdict.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One run's result as the recorder writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub run_id: i64,
    /// The host the run belongs to (the guardian's `host_name` when it ran).
    pub host: String,
    pub job_name: String,
    pub state: String,
    pub error: Option<String>,
    pub no_retry: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub output: String,
    pub output_bytes: u64,
    /// The process id, when it started (absent in files spooled by older versions).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The run's `SISY_RESULT` as JSON text for `sisy.runs.result`, None for NULL (absent in
    /// files spooled by older versions). Text, not a JSON value: a result as deep as the
    /// reader allows must still be readable one level down, inside its entry.
    #[serde(default)]
    pub result: Option<String>,
    /// When the job's process started, microseconds since the Unix epoch (absent in files
    /// spooled by older versions, and for a run whose process never started).
    #[serde(default)]
    pub started_at: Option<i64>,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens (creating it when needed) `state_dir/spool`.
    pub fn open(state_dir: &Path) -> io::Result<Spool> {
        let dir = state_dir.join("spool");
        std::fs::DirBuilder::new().recursive(true).create(&dir)?;
        Ok(Spool { dir })
    }

    fn path(&self, run_id: i64) -> PathBuf {
        self.dir.join(format!("{run_id}.json"))
    }

    /// Where `run_id`'s entry lives (for log lines).
    pub fn describe(&self, run_id: i64) -> String {
        self.path(run_id).display().to_string()
    }

    /// Stores `entry` durably: written to a temporary file, synced, renamed over the final
    /// name, directory synced. A reader never sees half an entry.
    pub fn save(&self, entry: &Entry) -> io::Result<()> {
        let path = self.path(entry.run_id);
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// [`Spool::save`] on the blocking pool: an fsync can take long on a busy disk, and must
    /// not hold up an async worker (the heartbeat runs on them).
    pub async fn save_off_runtime(&self, entry: &Entry) -> io::Result<()> {
        let (spool, entry) = (self.clone(), entry.clone());
        tokio::task::spawn_blocking(move || spool.save(&entry))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    /// [`Spool::remove`] on the blocking pool.
    pub async fn remove_off_runtime(&self, run_id: i64) {
        let spool = self.clone();
        let _ = tokio::task::spawn_blocking(move || spool.remove(run_id)).await;
    }

    /// [`Spool::load`] on the blocking pool.
    pub async fn load_off_runtime(&self) -> Vec<Entry> {
        let spool = self.clone();
        tokio::task::spawn_blocking(move || spool.load())
            .await
            .unwrap_or_default()
    }

    /// Forgets `run_id`'s entry (the database has it).
    pub fn remove(&self, run_id: i64) {
        let _ = std::fs::remove_file(self.path(run_id));
    }

    /// Every entry, by run id. A file that cannot be read is renamed `*.bad` (and logged)
    /// so that it neither blocks start-up nor is lost.
    pub fn load(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for file in dir.flatten() {
            let path = file.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {}
                Some("tmp") => {
                    // A save that did not finish: its result was still in memory, never
                    // acknowledged; the run will be declared lost.
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                _ => continue,
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
            {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable spool entry set aside as .bad");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        entries.sort_by_key(|e| e.run_id);
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(run_id: i64) -> Entry {
        Entry {
            pid: Some(4242),
            run_id,
            host: "h".into(),
            job_name: "j".into(),
            state: "succeeded".into(),
            error: None,
            no_retry: false,
            exit_code: Some(0),
            signal: None,
            output: "out\n".into(),
            output_bytes: 4,
            result: Some(format!("{{\"n\":{run_id}}}")),
            started_at: Some(1_796_000_000_000_000),
        }
    }

    #[test]
    fn entries_survive_and_come_back_in_run_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.save(&entry(9)).unwrap();
        spool.save(&entry(3)).unwrap();
        std::fs::write(dir.path().join("spool/5.tmp"), b"{half").unwrap();
        std::fs::write(dir.path().join("spool/7.json"), b"not json").unwrap();
        let again = Spool::open(dir.path()).unwrap();
        assert_eq!(again.load(), vec![entry(3), entry(9)]);
        assert!(dir.path().join("spool/7.bad").exists());
        assert!(!dir.path().join("spool/5.tmp").exists());
        again.remove(3);
        assert_eq!(again.load(), vec![entry(9)]);
    }

    #[test]
    fn an_entry_spooled_by_an_older_version_still_replays() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("spool/4.json"),
            r#"{"run_id":4,"host":"h","job_name":"j","state":"succeeded","error":null,"no_retry":false,"exit_code":0,"signal":null,"output":"","output_bytes":0}"#,
        )
        .unwrap();
        let loaded = spool.load();
        assert_eq!((loaded[0].run_id, &loaded[0].result), (4, &None));
    }
}

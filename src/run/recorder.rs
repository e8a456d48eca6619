//! The recorder: writes how a run ended into `sisy.runs`.
//!
//! Owns the mapping from a supervisor [`Outcome`] to a final state and its `error` sentence,
//! and writing it until the database takes it: a result is never dropped because the
//! database is away. When the first write fails, the result goes to the spool (see
//! [`crate::run::spool`]) and is retried with backoff (capped at the heartbeat interval, so a
//! result lands within a heartbeat of the database's return); the spool is replayed when a
//! guardian restarts. A run that is no longer running here when its result arrives (it was
//! declared lost meanwhile) keeps that verdict; the recorder then appends what this host saw
//! (fencing, the watchdog, or the late result) to its `error`.
//! The run's `SISY_RESULT` travels with its outcome (database, spool, replay alike): its
//! note joins the `error`, and a result over the limit fails a run that had succeeded.
//! Results that arrive while another write is under way are written together, in one
//! statement (`runs_finish_many.sql`), by whichever of them comes next: a guardian ending
//! many short runs pays one statement and one commit per batch, not per run, and a single
//! run waits for nothing. A batch that fails is no loss: each of its results goes on alone,
//! through the spool, as a single write that failed would.
//! Does not decide retries: the database trigger on `sisy.runs` does, for whoever writes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db::{self, q};
use crate::outage::{self, Outage};
use crate::run::spool::{Entry, Spool};
use crate::run::{Outcome, StopReason};

/// A final state with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub state: &'static str,
    pub error: Option<String>,
    pub no_retry: bool,
}

/// The state a run ends in, from how its process on `host` ended and what it left in its
/// `SISY_RESULT` file.
pub fn verdict(outcome: &Outcome, max_runtime: Option<Duration>, host: &str) -> Verdict {
    let mut verdict = process_verdict(outcome, max_runtime, host);
    let result = &outcome.result;
    if result.too_big && verdict.state == "succeeded" {
        verdict.state = "failed";
    }
    if let Some(note) = &result.note {
        verdict.error = Some(match verdict.error.take() {
            Some(error) => format!("{error}; {note}"),
            None => note.clone(),
        });
    }
    verdict
}

/// [`verdict`] from the process alone.
fn process_verdict(outcome: &Outcome, max_runtime: Option<Duration>, host: &str) -> Verdict {
    let v = |state, error: Option<String>| Verdict {
        state,
        error,
        no_retry: false,
    };
    if let Some(e) = &outcome.start_error {
        return v("failed", Some(e.clone()));
    }
    if outcome.unresponsive {
        return v(
            "lost",
            Some(format!(
                "the guardian on {host} stopped renewing its lease (paused or hung), so the job's \
                 processes were killed there before another host could take the run over"
            )),
        );
    }
    if outcome.timed_out {
        let limit = max_runtime
            .map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_default();
        return v(
            "timed_out",
            Some(format!(
                "exceeded max_runtime ({limit}): the process group was sent SIGTERM, then SIGKILL after kill_grace"
            )),
        );
    }
    match &outcome.stopped {
        // The row already says who asked (sisy.kill, or the run that replaced it).
        Some(StopReason::KillRequested) => return v("killed", Some("killed on request".into())),
        Some(StopReason::Shutdown) => return v("killed", Some("guardian shutdown".into())),
        Some(StopReason::GuardianFailed(why)) => {
            return v(
                "killed",
                Some(format!(
                    "guardian shutdown: the guardian on {host} stopped because {why}"
                )),
            );
        }
        Some(StopReason::Fenced) => {
            return v(
                "lost",
                Some(format!(
                    "its process on {host} was killed at once when that guardian found the run \
                     declared lost (fencing)"
                )),
            );
        }
        None => {}
    }
    match (outcome.exit_code, outcome.signal) {
        (Some(0), _) => v("succeeded", None),
        (Some(code), _) => v("failed", Some(format!("exited with code {code}"))),
        (None, Some(sig)) => v(
            "failed",
            Some(format!("terminated by signal {}", signal_name(sig))),
        ),
        (None, None) => v("failed", Some("ended without an exit status".into())),
    }
}

fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => format!("{} ({sig})", s.as_str()),
        Err(_) => sig.to_string(),
    }
}

/// What a write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Recorded,
    /// The run had been declared lost while its process ran here; its processes were killed
    /// (fencing or the watchdog) and the run's `error` says so.
    Fenced,
    /// The run had been declared lost, but its process had ended on its own; the result was
    /// appended to the run's `error`.
    Late,
}

/// Builds the entry that records `outcome` under `verdict`.
pub fn entry(
    host: &str,
    run_id: i64,
    job_name: &str,
    verdict: &Verdict,
    outcome: &Outcome,
) -> Entry {
    Entry {
        run_id,
        host: host.to_string(),
        job_name: job_name.to_string(),
        state: verdict.state.to_string(),
        error: verdict.error.clone(),
        no_retry: verdict.no_retry,
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        output: outcome.output.clone(),
        output_bytes: outcome.output_bytes,
        pid: outcome.pid,
        result: outcome.result.json.clone(),
        started_at: outcome.started_at,
    }
}

/// Writes results: to the database, through the spool when the database is away.
#[derive(Clone)]
pub struct Recorder {
    pub db: Pool,
    pub spool: Spool,
    pub outage: Arc<Outage>,
    /// The longest pause between two attempts.
    pub retry_cap: Duration,
    /// Results waiting to be written together.
    pub batch: Arc<Batch>,
}

/// Results waiting for the next batch, and the turn to write one (see the module doc).
#[derive(Default)]
pub struct Batch {
    waiting: Mutex<Vec<(Entry, tokio::sync::oneshot::Sender<Together>)>>,
    turn: tokio::sync::Mutex<()>,
    /// Whether the last batch held more than one result: runs are ending together, and the
    /// next batch waits [`GATHER`] for more to join.
    busy: std::sync::atomic::AtomicBool,
}

/// While runs end together, how long a batch waits for more results (its `finished_at` is
/// that much later at most), unless [`GATHER_RUNS`] are already waiting.
const GATHER: Duration = Duration::from_millis(2);
const GATHER_RUNS: usize = 8;

/// How a result fared in its batch.
enum Together {
    Recorded,
    /// Not written: no longer running here (declared lost meanwhile); written alone, which
    /// notes what this host saw.
    Alone,
    /// The batch failed; `connection`: for lack of a database (an outage), not a refusal.
    Failed {
        connection: bool,
        error: String,
    },
}

/// How long one write may take before it counts as failed (and the result is spooled): a
/// connection that hangs (a partition without a reset) must not keep a result out of the
/// spool. Repeating a write that did land is harmless (see `runs_finish.sql`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Recorder {
    /// Writes `entry`, retrying with backoff until the database takes it or `give_up` is
    /// cancelled (the entry then stays in the spool for the next start).
    pub async fn record(&self, entry: &Entry, give_up: &CancellationToken) -> Result<Written> {
        let mut pause = Duration::from_millis(100);
        let mut spooled = false;
        let mut first = true;
        loop {
            let sent = std::time::Instant::now();
            let written = if std::mem::take(&mut first) {
                self.write_together(entry).await
            } else {
                write_bounded(&self.db, entry).await
            };
            match written {
                Ok(w) => {
                    if spooled {
                        self.spool.remove_off_runtime(entry.run_id).await;
                        tracing::info!(run_id = entry.run_id, "spooled result written");
                    }
                    self.outage.ok(sent);
                    return Ok(w);
                }
                Err(e) => {
                    if outage::is_connection_error(&e) {
                        self.outage.failed("recorder", &e);
                    } else if !spooled {
                        tracing::warn!(run_id = entry.run_id, error = %format!("{e:#}"), "the database refused the run's result; retrying");
                    }
                    if !spooled {
                        spooled = true;
                        match self.spool.save_off_runtime(entry).await {
                            Ok(()) => tracing::info!(
                                run_id = entry.run_id, path = %self.spool.describe(entry.run_id),
                                "result kept in the spool until the database takes it"
                            ),
                            Err(se) => tracing::error!(
                                run_id = entry.run_id, error = %se,
                                "cannot write the spool: the result is kept in memory only"
                            ),
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = give_up.cancelled() => return Err(e),
                    }
                    pause = (pause * 2).min(self.retry_cap);
                }
            }
        }
    }

    /// Writes `entry` in the next batch: queued, then written by whoever takes the turn
    /// first, this caller or one that queued before it.
    async fn write_together(&self, entry: &Entry) -> Result<Written> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.batch.waiting).push((entry.clone(), tx));
        {
            let _turn = self.batch.turn.lock().await;
            // Busy (the last batch had company): a moment for more results to join.
            let queued = lock(&self.batch.waiting).len();
            if queued > 0
                && queued < GATHER_RUNS
                && self.batch.busy.load(std::sync::atomic::Ordering::Relaxed)
            {
                tokio::time::sleep(GATHER).await;
            }
            let batch = take_batch(&mut lock(&self.batch.waiting));
            if !batch.is_empty() {
                self.batch
                    .busy
                    .store(batch.len() > 1, std::sync::atomic::Ordering::Relaxed);
                write_batch(&self.db, batch).await;
            }
        }
        match rx.await {
            Ok(Together::Recorded) => Ok(Written::Recorded),
            Ok(Together::Alone) => write_bounded(&self.db, entry).await,
            Ok(Together::Failed { connection, error }) if connection => {
                // Said as the connection failure it was, so that the outage is reported.
                Err(anyhow::Error::new(std::io::Error::other(error)))
            }
            Ok(Together::Failed { error, .. }) => Err(anyhow::anyhow!(error)),
            // The writer's future was dropped mid-batch (cancelled): not known to be written.
            Err(_) => write_bounded(&self.db, entry).await,
        }
    }

    /// At start-up: writes what a previous process of this guardian spooled. Stops at the
    /// first failure, a write without an answer within [`WRITE_TIMEOUT`] included (the
    /// entries stay; start-up retries).
    pub async fn replay(&self) -> Result<usize> {
        let entries = self.spool.load_off_runtime().await;
        for entry in &entries {
            let written = write_bounded(&self.db, entry).await?;
            self.spool.remove_off_runtime(entry.run_id).await;
            tracing::info!(run_id = entry.run_id, job = %entry.job_name, state = %entry.state, ?written, "spooled result of a previous guardian process written");
        }
        Ok(entries.len())
    }
}

/// Seconds from `at` (microseconds since the Unix epoch, by this host's clock) to now, by
/// the same clock: the statement places it on the database's (see `runs_finish.sql`).
fn since(at: Option<i64>) -> Option<f64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_micros() as i64;
    at.map(|at| (now.saturating_sub(at)).max(0) as f64 / 1e6)
}

/// The lock's data, also after a panic while it was held (a Vec of results stays valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The most results one statement writes, and the most output it carries: a guardian of a
/// large capacity ending hundreds of runs at once sends a few statements of bounded size.
const BATCH_RUNS: usize = 256;
const BATCH_OUTPUT: usize = 16 << 20;

/// The oldest waiting results, up to the bounds above (at least one); the rest wait for
/// the next turn, which one of their own callers takes.
fn take_batch<T>(waiting: &mut Vec<(Entry, T)>) -> Vec<(Entry, T)> {
    let mut output = 0;
    let n = waiting
        .iter()
        .take_while(|(e, _)| {
            output += e.output.len();
            output <= BATCH_OUTPUT
        })
        .count()
        .clamp(1, BATCH_RUNS)
        .min(waiting.len());
    waiting.drain(..n).collect()
}

/// Writes a batch in one statement and tells each result how it fared.
async fn write_batch(db: &Pool, batch: Vec<(Entry, tokio::sync::oneshot::Sender<Together>)>) {
    let entries: Vec<&Entry> = batch.iter().map(|(e, _)| e).collect();
    let written = db::within(db, WRITE_TIMEOUT, "runs' results", write_many(db, &entries)).await;
    match written {
        Ok(recorded) => {
            for (entry, tx) in batch {
                let _ = tx.send(if recorded.contains(&entry.run_id) {
                    Together::Recorded
                } else {
                    Together::Alone
                });
            }
        }
        Err(e) => {
            let connection = outage::is_connection_error(&e);
            let error = format!("{e:#}");
            for (_, tx) in batch {
                let _ = tx.send(Together::Failed {
                    connection,
                    error: error.clone(),
                });
            }
        }
    }
}

/// `runs_finish_many.sql` for `entries` (all of one host); returns the ids it wrote.
async fn write_many(db: &Pool, entries: &[&Entry]) -> Result<HashSet<i64>> {
    let client = db::checkout(db).await?;
    let column =
        |f: &dyn Fn(&Entry) -> Option<String>| entries.iter().map(|e| f(e)).collect::<Vec<_>>();
    let ids: Vec<i64> = entries.iter().map(|e| e.run_id).collect();
    let states = column(&|e| Some(e.state.clone()));
    let codes: Vec<Option<i32>> = entries.iter().map(|e| e.exit_code).collect();
    let signals: Vec<Option<i32>> = entries.iter().map(|e| e.signal).collect();
    let outputs = column(&|e| Some(e.output.clone()));
    let bytes: Vec<i64> = entries.iter().map(|e| e.output_bytes as i64).collect();
    let errors = column(&|e| e.error.clone());
    let no_retry: Vec<bool> = entries.iter().map(|e| e.no_retry).collect();
    let pids: Vec<Option<i32>> = entries.iter().map(|e| e.pid.map(|p| p as i32)).collect();
    let results = column(&|e| e.result.clone());
    let started: Vec<Option<f64>> = entries.iter().map(|e| since(e.started_at)).collect();
    let host = entries.first().map(|e| e.host.clone()).unwrap_or_default();
    let rows = db::query(
        &client,
        q::RUNS_FINISH_MANY,
        &[
            &ids, &host, &states, &codes, &signals, &outputs, &bytes, &errors, &no_retry, &pids,
            &results, &started,
        ],
    )
    .await?;
    client.release();
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

/// [`write`], failing with a timed-out I/O error (a connection failure) after
/// [`WRITE_TIMEOUT`]; through `db::within`, which also closes the pool's idle connections: opened before the
/// silence, each would cost the next write a timeout of its own.
async fn write_bounded(db: &Pool, entry: &Entry) -> Result<Written> {
    db::within(db, WRITE_TIMEOUT, "a run's result", write(db, entry)).await
}

async fn write(db: &Pool, e: &Entry) -> Result<Written> {
    // A write that times out drops its connection rather than return it hung (see `db`).
    let client = db::checkout(db).await?;
    let bytes = e.output_bytes as i64;
    let pid = e.pid.map(|p| p as i32);
    let rows = db::query(
        &client,
        q::RUNS_FINISH,
        &[
            &e.run_id,
            &e.host,
            &e.state,
            &e.exit_code,
            &e.signal,
            &e.output,
            &bytes,
            &e.error,
            &e.no_retry,
            &pid,
            &e.result,
            &since(e.started_at),
        ],
    )
    .await?;
    if !rows.is_empty() {
        client.release();
        return Ok(Written::Recorded);
    }
    // No longer running here: declared lost (or changed by hand) meanwhile.
    let (note, written) = if e.state == "lost" {
        (e.error.clone().unwrap_or_default(), Written::Fenced)
    } else {
        let how = e
            .error
            .clone()
            .unwrap_or_else(|| match (e.exit_code, e.signal) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => "no exit status".into(),
            });
        (
            format!(
                "its process on {} ended on its own ({}: {how}), but that result reached the database after the run had been declared lost",
                e.host, e.state
            ),
            Written::Late,
        )
    };
    db::execute(
        &client,
        q::RUNS_NOTE,
        &[&e.run_id, &note, &e.output, &bytes],
    )
    .await?;
    client.release();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(code: Option<i32>, signal: Option<i32>) -> Outcome {
        Outcome {
            exit_code: code,
            signal,
            ..Outcome::default()
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&ended(Some(0), None), None, "h").state, "succeeded");
        let failed = verdict(&ended(Some(3), None), None, "h");
        assert_eq!(
            (failed.state, failed.error.as_deref()),
            ("failed", Some("exited with code 3"))
        );
        let sig = verdict(&ended(None, Some(9)), None, "h");
        assert_eq!(
            sig.error.as_deref(),
            Some("terminated by signal SIGKILL (9)")
        );
        let mut timed = ended(None, Some(15));
        timed.timed_out = true;
        assert_eq!(
            verdict(&timed, Some(Duration::from_secs(2)), "h").state,
            "timed_out"
        );
        let mut shut = ended(None, Some(15));
        shut.stopped = Some(StopReason::Shutdown);
        assert_eq!(
            verdict(&shut, None, "h").error.as_deref(),
            Some("guardian shutdown")
        );
    }

    #[test]
    fn a_run_killed_by_fencing_or_the_watchdog_is_lost_and_says_where() {
        let mut fenced = ended(None, Some(9));
        fenced.stopped = Some(StopReason::Fenced);
        let v = verdict(&fenced, None, "web-1");
        assert_eq!(v.state, "lost");
        assert!(v.error.unwrap().contains("on web-1 was killed at once"));
        let mut paused = ended(None, Some(9));
        paused.unresponsive = true;
        paused.stopped = Some(StopReason::Fenced);
        let v = verdict(&paused, None, "web-1");
        assert_eq!(v.state, "lost");
        assert!(v.error.unwrap().contains("stopped renewing its lease"));
    }

    #[test]
    fn a_result_over_the_limit_fails_a_run_and_notes_join_the_error() {
        let big = crate::run::result::Stored {
            json: None,
            note: Some("SISY_RESULT is 70000 bytes".into()),
            too_big: true,
        };
        let mut ok = ended(Some(0), None);
        ok.result = big.clone();
        let v = verdict(&ok, None, "h");
        assert_eq!(
            (v.state, v.error.as_deref()),
            ("failed", Some("SISY_RESULT is 70000 bytes"))
        );
        let mut failed = ended(Some(3), None);
        failed.result = big;
        let v = verdict(&failed, None, "h");
        assert_eq!(
            v.error.as_deref(),
            Some("exited with code 3; SISY_RESULT is 70000 bytes")
        );
        let mut text = ended(Some(0), None);
        text.result.note = Some("stored as a JSON string".into());
        assert_eq!(verdict(&text, None, "h").state, "succeeded");
    }
}

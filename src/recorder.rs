//! The recorder: writes how a run ended into `sisy.runs`.
//!
//! Owns the mapping from a supervisor [`Outcome`] to a final state and its `error` sentence,
//! and writing it until the database takes it (a result is never dropped because the
//! database was briefly away). A run that was declared lost while it ran here keeps that
//! verdict; the recorder then notes that this host killed the process (fencing).
//! Does not decide retries: the database trigger on `sisy.runs` does, for whoever writes.

use std::time::Duration;

use anyhow::Result;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::db::q;
use crate::supervisor::{Outcome, StopReason};

/// A final state with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub state: &'static str,
    pub error: Option<String>,
    pub no_retry: bool,
}

/// The state a run ends in, from how its process ended.
pub fn verdict(outcome: &Outcome, max_runtime: Option<Duration>) -> Verdict {
    let v = |state, error: Option<String>| Verdict {
        state,
        error,
        no_retry: false,
    };
    if let Some(e) = &outcome.start_error {
        return v("failed", Some(e.clone()));
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
        Some(StopReason::Fenced) => return v("lost", None),
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
    /// The run was no longer running here (declared lost): fencing noted instead.
    Fenced,
}

/// Writes the end of run `id`, retrying with backoff until the database takes it or
/// `give_up` is cancelled.
pub async fn record(
    db: &Pool,
    host: &str,
    id: i64,
    verdict: &Verdict,
    outcome: &Outcome,
    give_up: &CancellationToken,
) -> Result<Written> {
    let mut pause = Duration::from_millis(100);
    loop {
        match write(db, host, id, verdict, outcome).await {
            Ok(w) => return Ok(w),
            Err(e) => {
                tracing::warn!(run_id = id, error = %e, "cannot record the run's result yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = give_up.cancelled() => return Err(e),
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn write(db: &Pool, host: &str, id: i64, v: &Verdict, o: &Outcome) -> Result<Written> {
    let client = db.get().await?;
    let bytes = o.output_bytes as i64;
    if v.state != "lost" {
        let rows = client
            .query(
                q::RUNS_FINISH,
                &[
                    &id,
                    &host,
                    &v.state,
                    &o.exit_code,
                    &o.signal,
                    &o.output,
                    &bytes,
                    &v.error,
                    &v.no_retry,
                ],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(Written::Recorded);
        }
    }
    client
        .execute(q::RUNS_NOTE_FENCED, &[&id, &host, &o.output, &bytes])
        .await?;
    Ok(Written::Fenced)
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
        assert_eq!(verdict(&ended(Some(0), None), None).state, "succeeded");
        let failed = verdict(&ended(Some(3), None), None);
        assert_eq!(
            (failed.state, failed.error.as_deref()),
            ("failed", Some("exited with code 3"))
        );
        let sig = verdict(&ended(None, Some(9)), None);
        assert_eq!(
            sig.error.as_deref(),
            Some("terminated by signal SIGKILL (9)")
        );
        let mut timed = ended(None, Some(15));
        timed.timed_out = true;
        assert_eq!(
            verdict(&timed, Some(Duration::from_secs(2))).state,
            "timed_out"
        );
        let mut shut = ended(None, Some(15));
        shut.stopped = Some(StopReason::Shutdown);
        assert_eq!(
            verdict(&shut, None).error.as_deref(),
            Some("guardian shutdown")
        );
    }
}

//! The run room: what runs one job on this host, from a claimed row to its recorded end.
//!
//! This module holds the types the run machinery and the services share: the claimed run
//! (what the claimer hands over), the process [`Spec`] (what `launch` builds, the supervisor
//! and the run shim start), [`StopReason`] and [`Outcome`]. The room imports only `db`,
//! `outage`, `metrics` and the config below it; nothing here knows of the services that
//! call it nor of the guardian that spawns them.

use std::time::Duration;

use chrono::{DateTime, Utc};

use users::Identity;

pub(crate) mod launch;
pub(crate) mod orphans;
pub(crate) mod proc;
pub(crate) mod recorder;
pub(crate) mod result;
pub mod shim;
pub(crate) mod spool;
pub(crate) mod supervisor;
pub(crate) mod table;

pub(crate) mod users;

/// A claimed run with what is needed to start it.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub id: i64,
    pub job_id: i64,
    pub job_name: String,
    pub scheduled_for: DateTime<Utc>,
    pub attempt: i32,
    pub target_host: Option<String>,
    pub due_at: DateTime<Utc>,
    pub command: String,
    pub run_as: Option<String>,
    pub env: serde_json::Value,
    pub workdir: Option<String>,
    pub overlap: Overlap,
    pub max_runtime: Option<Duration>,
    pub kill_grace: Duration,
    /// The flow run this run belongs to (a member's run, the root's included); None outside
    /// flows.
    pub flow_run_id: Option<i64>,
    /// The member's frozen inputs as JSON text (`sisy.runs.inputs`), handed over as they are.
    pub inputs: Option<String>,
    /// An item of a fan-out: the item as JSON text (`sisy.runs.item`).
    pub item: Option<String>,
    /// The job's `max_concurrency` when claimed (None: no cap): admission then takes the
    /// job's lock and reads the cap again under it.
    pub max_concurrency: Option<i32>,
    /// The item's place in its fan-out (`sisy.runs.item_index`); None outside fan-outs.
    pub item_index: Option<i32>,
    /// An item of a fan-out whose inputs are its member's: the member's decision (its first
    /// attempt). Admission fills `inputs` from them, read once per decision.
    pub member_decision: Option<i32>,
    /// A value of the row the guardian could not read (an `env` nested too deep for the
    /// JSON decoder): the run is refused with this sentence instead of started.
    pub defect: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Forbid,
    Allow,
    Replace,
}

/// Everything needed to start one run.
#[derive(Debug)]
pub struct Spec {
    pub run_id: i64,
    pub job_name: String,
    pub command: String,
    pub env: Vec<(String, String)>,
    pub identity: Identity,
    pub workdir: String,
    /// This host's name, for the shim's sentences.
    pub host: String,
    pub max_runtime: Option<Duration>,
    pub kill_grace: Duration,
    pub output_limit: usize,
    /// The run's `SISY_RESULT` file (see [`result`]), read once the job's processes are gone.
    pub result: result::Place,
}

/// Why the supervisor stopped a run that had not ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `sisy.kill` or `overlap = replace` (the database row carries the words).
    KillRequested,
    /// The guardian is shutting down.
    Shutdown,
    /// The guardian stops because one of its own services failed (the reason, in words).
    GuardianFailed(String),
    /// The run was declared lost while its process still ran here: SIGKILL at once.
    Fenced,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub pid: Option<u32>,
    /// When the job's process started (microseconds since the Unix epoch, by the clock of
    /// the host that started it), as its run shim reported it.
    pub started_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The last `output_limit` bytes of combined output, as lossy UTF-8.
    pub output: String,
    pub output_bytes: u64,
    /// Set when the process could not be started.
    pub start_error: Option<String>,
    pub timed_out: bool,
    pub stopped: Option<StopReason>,
    /// The shim's watchdog killed the job: the guardian had stopped renewing its lease.
    pub unresponsive: bool,
    pub duration: Duration,
    /// What the job left in its `SISY_RESULT` file.
    pub result: result::Stored,
}

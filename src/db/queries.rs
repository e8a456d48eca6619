//! The catalogue: every statement the guardian and the CLI issue, one `.sql` file each under
//! `sql/queries/` (the CLI's under `sql/queries/cli/`), compiled in with `include_str!` so
//! the binary carries them. Only `migrate` has SQL of its own (its bookkeeping); nothing
//! else in `src/` writes a statement. Does not run anything: callers prepare and execute.

/// The states of a run (`sisy.runs.state`), as its CHECK constraint lists them: the values a
/// filter by state may name (`sisy runs list --state`, the dashboard's runs page).
pub const RUN_STATES: &[&str] = &[
    "pending",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "killed",
    "lost",
    "expired",
    "skipped",
    "cancelled",
    "upstream_failed",
];

/// The named statements, grouped by the table they work on.
pub mod q {
    pub const JOBS_UNSEEN: &str = include_str!("../../sql/queries/jobs_unseen.sql");
    pub const JOBS_DUE: &str = include_str!("../../sql/queries/jobs_due.sql");
    pub const JOBS_SET_NEXT_DUE: &str = include_str!("../../sql/queries/jobs_set_next_due.sql");
    pub const JOBS_SEED: &str = include_str!("../../sql/queries/jobs_seed.sql");
    pub const JOBS_LOCK_FOR_ADMISSION: &str =
        include_str!("../../sql/queries/jobs_lock_for_admission.sql");
    pub const JOBS_LOCK_FOR_OWN_ADMISSION: &str =
        include_str!("../../sql/queries/jobs_lock_for_own_admission.sql");
    pub const HOSTS_LIVE: &str = include_str!("../../sql/queries/hosts_live.sql");
    pub const HOSTS_REGISTER: &str = include_str!("../../sql/queries/hosts_register.sql");
    pub const HOSTS_RELEASE: &str = include_str!("../../sql/queries/hosts_release.sql");
    pub const HOSTS_REANNOUNCE: &str = include_str!("../../sql/queries/hosts_reannounce.sql");
    pub const HEARTBEAT: &str = include_str!("../../sql/queries/heartbeat.sql");
    pub const RUNS_INSERT: &str = include_str!("../../sql/queries/runs_insert.sql");
    pub const RUNS_EXTEND_HOSTLESS: &str =
        include_str!("../../sql/queries/runs_extend_hostless.sql");
    pub const RUNS_TICK: &str = include_str!("../../sql/queries/runs_tick.sql");
    pub const RUNS_CLAIM: &str = include_str!("../../sql/queries/runs_claim.sql");
    pub const RUNS_RUNNING_OF_JOBS: &str =
        include_str!("../../sql/queries/runs_running_of_jobs.sql");
    pub const RUNS_ADMIT: &str = include_str!("../../sql/queries/runs_admit.sql");
    pub const FLOW_MEMBER_INPUTS: &str = include_str!("../../sql/queries/flow_member_inputs.sql");
    pub const RUNS_RELEASE: &str = include_str!("../../sql/queries/runs_release.sql");
    pub const RUNS_WAKE_POOL: &str = include_str!("../../sql/queries/runs_wake_pool.sql");
    pub const RUNS_HELP: &str = include_str!("../../sql/queries/runs_help.sql");
    pub const RUNS_SKIP: &str = include_str!("../../sql/queries/runs_skip.sql");
    pub const RUNS_KILL_UNSTARTED: &str = include_str!("../../sql/queries/runs_kill_unstarted.sql");
    pub const RUNS_REQUEST_REPLACE: &str =
        include_str!("../../sql/queries/runs_request_replace.sql");
    pub const RUNS_FINISH: &str = include_str!("../../sql/queries/runs_finish.sql");
    pub const RUNS_FINISH_MANY: &str = include_str!("../../sql/queries/runs_finish_many.sql");
    pub const RUNS_NOTE: &str = include_str!("../../sql/queries/runs_note.sql");
    pub const RUNS_PRUNE: &str = include_str!("../../sql/queries/runs_prune.sql");
    pub const FLOW_RUNS_PRUNE: &str = include_str!("../../sql/queries/flow_runs_prune.sql");
    pub const FLOWS_TEND: &str = include_str!("../../sql/queries/flows_tend.sql");
    pub const HOSTS_PRUNE: &str = include_str!("../../sql/queries/hosts_prune.sql");
    pub const RUNS_LOST_WITHOUT_HOST: &str =
        include_str!("../../sql/queries/runs_lost_without_host.sql");
    pub const RUNS_ORPHANED_BY_RESTART: &str =
        include_str!("../../sql/queries/runs_orphaned_by_restart.sql");
    pub const MIGRATIONS_APPLIED: &str = include_str!("../../sql/queries/migrations_applied.sql");
    pub const LISTEN: &str = include_str!("../../sql/queries/listen.sql");
    pub const PING: &str = include_str!("../../sql/queries/ping.sql");
}

/// The statements of the `sisy` CLI (a thin client over the SQL surface).
pub mod cli {
    pub const JOBS_LIST: &str = include_str!("../../sql/queries/cli/jobs_list.sql");
    pub const JOBS_SHOW: &str = include_str!("../../sql/queries/cli/jobs_show.sql");
    pub const JOBS_SHOW_ENV: &str = include_str!("../../sql/queries/cli/jobs_show_env.sql");
    pub const JOBS_ADD: &str = include_str!("../../sql/queries/cli/jobs_add.sql");
    pub const JOBS_ADD_GIVEN: &str = include_str!("../../sql/queries/cli/jobs_add_given.sql");
    pub const JOBS_EDIT: &str = include_str!("../../sql/queries/cli/jobs_edit.sql");
    pub const JOBS_RM: &str = include_str!("../../sql/queries/cli/jobs_rm.sql");
    pub const JOBS_IMPORT_LOCK: &str = include_str!("../../sql/queries/cli/jobs_import_lock.sql");
    pub const JOBS_IMPORT_EXISTING: &str =
        include_str!("../../sql/queries/cli/jobs_import_existing.sql");
    pub const JOBS_IMPORT_PREVIEW: &str =
        include_str!("../../sql/queries/cli/jobs_import_preview.sql");
    pub const JOBS_IMPORT_PREVIEW_NAMES: &str =
        include_str!("../../sql/queries/cli/jobs_import_preview_names.sql");
    pub const JOBS_IMPORT_CREATE: &str =
        include_str!("../../sql/queries/cli/jobs_import_create.sql");
    pub const JOBS_IMPORT_UPDATE: &str =
        include_str!("../../sql/queries/cli/jobs_import_update.sql");
    pub const JOBS_IMPORT_REMOVE: &str =
        include_str!("../../sql/queries/cli/jobs_import_remove.sql");
    pub const JOBS_IMPORT_SUSPEND: &str =
        include_str!("../../sql/queries/cli/jobs_import_suspend.sql");
    pub const RUNS_LIST: &str = include_str!("../../sql/queries/cli/runs_list.sql");
    pub const RUNS_SHOW: &str = include_str!("../../sql/queries/cli/runs_show.sql");
    pub const RUNS_LOGS: &str = include_str!("../../sql/queries/cli/runs_logs.sql");
    pub const HOSTS_LIST: &str = include_str!("../../sql/queries/cli/hosts_list.sql");
    pub const STATUS: &str = include_str!("../../sql/queries/cli/status.sql");
    pub const JOBS_SUSPEND: &str = include_str!("../../sql/queries/cli/jobs_suspend.sql");
    pub const JOBS_RESUME: &str = include_str!("../../sql/queries/cli/jobs_resume.sql");
    pub const JOBS_TRIGGER: &str = include_str!("../../sql/queries/cli/jobs_trigger.sql");
    pub const RUNS_KILL: &str = include_str!("../../sql/queries/cli/runs_kill.sql");
    pub const RUNS_RETRY: &str = include_str!("../../sql/queries/cli/runs_retry.sql");
    pub const HOSTS_DRAIN: &str = include_str!("../../sql/queries/cli/hosts_drain.sql");
    pub const HOSTS_UNDRAIN: &str = include_str!("../../sql/queries/cli/hosts_undrain.sql");
    pub const JOBS_AFTER_KEEP: &str = include_str!("../../sql/queries/cli/jobs_after_keep.sql");
    pub const JOBS_AFTER_ADD: &str = include_str!("../../sql/queries/cli/jobs_after_add.sql");
    pub const FLOWS_LIST: &str = include_str!("../../sql/queries/cli/flows_list.sql");
    pub const FLOWS_SHOW: &str = include_str!("../../sql/queries/cli/flows_show.sql");
    pub const FLOWS_MEMBERS: &str = include_str!("../../sql/queries/cli/flows_members.sql");
    pub const FLOWS_CANCEL: &str = include_str!("../../sql/queries/cli/flows_cancel.sql");
    pub const FLOWS_RERUN: &str = include_str!("../../sql/queries/cli/flows_rerun.sql");
    pub const FLOWS_GRAPH_JOB: &str = include_str!("../../sql/queries/cli/flows_graph_job.sql");
    pub const FLOWS_GRAPH_RUN: &str = include_str!("../../sql/queries/cli/flows_graph_run.sql");
}

/// The dashboard's statements (`sisy web`), each one page's data in one statement; the job
/// and flow pages reuse the CLI's `JOBS_SHOW`, `FLOWS_LIST`, `FLOWS_SHOW`, `FLOWS_MEMBERS` and
/// `FLOWS_GRAPH_RUN`.
pub mod web {
    pub const FLEET: &str = include_str!("../../sql/queries/web/fleet.sql");
    pub const JOBS: &str = include_str!("../../sql/queries/web/jobs.sql");
    pub const RUNS: &str = include_str!("../../sql/queries/web/runs.sql");
    pub const RUNS_WINDOW: &str = include_str!("../../sql/queries/web/runs_window.sql");
    pub const RUNS_HOST: &str = include_str!("../../sql/queries/web/runs_host.sql");
    pub const RUN: &str = include_str!("../../sql/queries/web/run.sql");
    pub const JOB_ID: &str = include_str!("../../sql/queries/web/job_id.sql");
    pub const MISSED: &str = include_str!("../../sql/queries/web/missed.sql");
}

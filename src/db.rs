//! Connections to PostgreSQL and the catalogue of SQL statements.
//!
//! Owns: parsing the database URL, opening single connections and pools, turning driver
//! errors into sentences a person can act on, and the named queries under `sql/queries/`
//! (loaded with `include_str!`, so the binary carries them). Does not own what the queries
//! mean: each service (scheduler, claimer, heartbeat, …) calls the statements it needs.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, Config, NoTls};

/// The named statements, grouped by the table they work on.
pub mod q {
    pub const JOBS_UNSEEN: &str = include_str!("../sql/queries/jobs_unseen.sql");
    pub const JOBS_DUE: &str = include_str!("../sql/queries/jobs_due.sql");
    pub const JOBS_SET_NEXT_DUE: &str = include_str!("../sql/queries/jobs_set_next_due.sql");
    pub const JOBS_LOCK_FOR_ADMISSION: &str =
        include_str!("../sql/queries/jobs_lock_for_admission.sql");
    pub const HOSTS_LIVE: &str = include_str!("../sql/queries/hosts_live.sql");
    pub const HOSTS_REGISTER: &str = include_str!("../sql/queries/hosts_register.sql");
    pub const HOSTS_RELEASE: &str = include_str!("../sql/queries/hosts_release.sql");
    pub const HOSTS_REANNOUNCE: &str = include_str!("../sql/queries/hosts_reannounce.sql");
    pub const HEARTBEAT: &str = include_str!("../sql/queries/heartbeat.sql");
    pub const RUNS_INSERT: &str = include_str!("../sql/queries/runs_insert.sql");
    pub const RUNS_TICK: &str = include_str!("../sql/queries/runs_tick.sql");
    pub const RUNS_CLAIM: &str = include_str!("../sql/queries/runs_claim.sql");
    pub const RUNS_RUNNING_OF_JOBS: &str = include_str!("../sql/queries/runs_running_of_jobs.sql");
    pub const RUNS_ADMIT: &str = include_str!("../sql/queries/runs_admit.sql");
    pub const RUNS_SKIP: &str = include_str!("../sql/queries/runs_skip.sql");
    pub const RUNS_REQUEST_REPLACE: &str = include_str!("../sql/queries/runs_request_replace.sql");
    pub const RUNS_FINISH: &str = include_str!("../sql/queries/runs_finish.sql");
    pub const RUNS_NOTE: &str = include_str!("../sql/queries/runs_note.sql");
    pub const RUNS_PRUNE: &str = include_str!("../sql/queries/runs_prune.sql");
    pub const HOSTS_PRUNE: &str = include_str!("../sql/queries/hosts_prune.sql");
    pub const RUNS_ORPHANED_BY_RESTART: &str =
        include_str!("../sql/queries/runs_orphaned_by_restart.sql");
}

/// The statements of the `sisy` CLI (a thin client over the SQL surface).
pub mod cli {
    pub const JOBS_LIST: &str = include_str!("../sql/queries/cli/jobs_list.sql");
    pub const JOBS_SHOW: &str = include_str!("../sql/queries/cli/jobs_show.sql");
    pub const JOBS_ADD: &str = include_str!("../sql/queries/cli/jobs_add.sql");
    pub const JOBS_EDIT: &str = include_str!("../sql/queries/cli/jobs_edit.sql");
    pub const JOBS_RM: &str = include_str!("../sql/queries/cli/jobs_rm.sql");
    pub const JOBS_UPSERT: &str = include_str!("../sql/queries/cli/jobs_upsert.sql");
    pub const RUNS_LIST: &str = include_str!("../sql/queries/cli/runs_list.sql");
    pub const RUNS_SHOW: &str = include_str!("../sql/queries/cli/runs_show.sql");
    pub const RUNS_LOGS: &str = include_str!("../sql/queries/cli/runs_logs.sql");
    pub const HOSTS_LIST: &str = include_str!("../sql/queries/cli/hosts_list.sql");
    pub const STATUS: &str = include_str!("../sql/queries/cli/status.sql");
}

/// Parses a libpq URL or key=value string; the error never repeats the password.
pub fn parse_url(url: &str) -> Result<Config> {
    Config::from_str(url).map_err(|e| {
        anyhow!(
            "the database URL is not valid ({e}): write it like postgres://user@host:5432/db or host=... dbname=..."
        )
    })
}

/// A human description of where a config points, for error messages (no password).
pub fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "host {} port {} database {}",
        if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        },
        if ports.is_empty() {
            "5432".to_string()
        } else {
            ports.join(",")
        },
        config.get_dbname().unwrap_or("(default)")
    )
}

/// One connection, its driver task spawned on the current runtime.
pub async fn connect(url: &str) -> Result<Client> {
    let mut config = parse_url(url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let (client, connection) = config.connect(NoTls).await.with_context(|| {
        format!(
            "cannot connect to the database at {}: check the URL and that PostgreSQL is running",
            describe(&config)
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// A pool of connections for the guardian's services.
pub fn pool(url: &str, size: usize) -> Result<Pool> {
    let mut config = parse_url(url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .context("cannot build the database connection pool")
}

/// The message of a database error as PostgreSQL phrased it (for RAISE EXCEPTION texts),
/// or the driver's own words when there is no server message.
pub fn error_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// Converts seconds (as PostgreSQL's `extract(epoch …)` returns them) to a Duration,
/// treating NULL, negatives and non-finite values as zero.
pub fn secs(value: Option<f64>) -> Duration {
    match value {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
        _ => Duration::ZERO,
    }
}

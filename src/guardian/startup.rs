//! Start-up steps 1–4 of the guardian (see `guardian`): the state directory and its lock,
//! reaching the database, the schema check, registering the host, replaying the spool.
//!
//! Every step that talks to the database is bounded by [`step_limit`]: a database that
//! accepts connections and never answers (packets dropped, a hung server) counts as a failed
//! attempt, like a refused connection, and the start-up sequence tries again. Blocking file
//! system work (the sweep of leftover processes) runs on the blocking pool. Does not own the
//! retry loop (`guardian::run`) nor what happens once the services run.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;

use crate::config::GuardianConfig;
use crate::db::{self, q};
use crate::migrate;
use crate::outage::{self, Outage};
use crate::run::orphans::Registry;
use crate::run::recorder::Recorder;
use crate::run::result::Room;
use crate::run::spool::Spool;

/// How long one start-up step may wait for the database: a lease, the time after which a
/// guardian that does not answer counts as dead anyway.
pub(super) fn step_limit(config: &GuardianConfig) -> Duration {
    config.lease
}

/// `step`, failing with a timed-out I/O error (a connection failure, which start-up waits
/// out) when the database has not answered within `limit`.
pub(super) async fn bounded<T>(
    limit: Duration,
    what: &str,
    step: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result,
        Err(_) => Err(
            anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::TimedOut)).context(
                format!("no answer from the database within {limit:?} ({what})"),
            ),
        ),
    }
}

/// Steps 2–4, repeated with backoff (up to `heartbeat_interval`) while the database is
/// unreachable or does not answer; an error no retry can fix stops start-up. None when
/// shutdown was asked for meanwhile: it interrupts any step, none of them has to finish.
pub(super) async fn until_started(
    pool: &Pool,
    config: &GuardianConfig,
    recorder: &Recorder,
    outage: &Outage,
    shutdown: &CancellationToken,
) -> Result<Option<Registration>> {
    let mut pause = Duration::from_millis(100);
    loop {
        let began = std::time::Instant::now();
        let attempt = tokio::select! {
            r = start_up(pool, config, recorder, shutdown) => r,
            _ = shutdown.cancelled() => return Ok(None),
        };
        match attempt {
            Ok(started) => {
                outage.ok(began);
                return Ok(started);
            }
            Err(e) if outage::is_connection_error(&e) => outage.failed("start-up", &e),
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
        pause = (pause * 2).min(config.heartbeat_interval);
    }
}

/// The instant just before the registration was sent (the host's lease runs from no
/// earlier) and the registration's `started_at`, which names this process in heartbeats.
pub(super) type Registration = (Instant, DateTime<Utc>);

/// Steps 2–4 of the start-up; None when shutdown was asked for meanwhile.
async fn start_up(
    pool: &Pool,
    config: &GuardianConfig,
    recorder: &Recorder,
    shutdown: &CancellationToken,
) -> Result<Option<Registration>> {
    let limit = step_limit(config);
    // A step that times out returns early and drops this connection, which closes it (see
    // `db::Conn`): it may have fallen silent, and back in the pool it would hang every later
    // attempt on it, even once the database is back.
    let client = bounded(limit, "connecting", async {
        db::checkout(pool).await.context(
            "cannot connect to the database: check database_url and that PostgreSQL is running",
        )
    })
    .await?;
    bounded(
        limit,
        "checking the schema",
        migrate::ensure_current(&client),
    )
    .await?;
    let Some(registration) = register(&client, config, shutdown).await? else {
        return Ok(None);
    };
    let replayed = recorder.replay().await?;
    if replayed > 0 {
        tracing::info!(
            count = replayed,
            "results spooled by the previous guardian process written"
        );
    }
    let lost = bounded(limit, "declaring the previous process's runs lost", async {
        Ok(db::execute(&client, q::RUNS_ORPHANED_BY_RESTART, &[&config.host_name]).await?)
    })
    .await?;
    if lost > 0 {
        tracing::warn!(
            count = lost,
            "runs left running by this host's previous process marked lost"
        );
    }
    client.release();
    Ok(Some(registration))
}

/// Registers this host, waiting while another process holds its lease.
async fn register(
    client: &db::Conn,
    config: &GuardianConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Registration>> {
    let lease = config.lease.as_secs_f64();
    let capacity = config.capacity as i32;
    let mut logged = false;
    loop {
        let sent = Instant::now();
        let row = bounded(step_limit(config), "registering the host", async {
            Ok(db::query_one(
                client,
                q::HOSTS_REGISTER,
                &[
                    &config.host_name,
                    &config.pools,
                    &env!("CARGO_PKG_VERSION"),
                    &lease,
                    &capacity,
                ],
            )
            .await?)
        })
        .await?;
        // Registered when the upsert wrote the row (it returns the new `started_at`).
        if let Some(incarnation) = row.get::<_, Option<DateTime<Utc>>>("incarnation") {
            return Ok(Some((sent, incarnation)));
        }
        if !logged {
            // Unknown when the other process registered during this very statement.
            let until: Option<DateTime<Utc>> = row.get("held_until");
            tracing::warn!(
                host = %config.host_name, until = ?until,
                "another guardian holds this host's lease (a previous process that did not stop cleanly, or a second guardian with the same host_name); waiting for it to expire"
            );
            logged = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// The guardian's local state directory, held exclusively while the process runs.
pub(super) struct StateDir {
    /// An exclusive lock on `state_dir/lock`: two guardian processes sharing a directory
    /// would replay each other's spool and kill each other's jobs at start-up.
    _lock: Flock<File>,
    pub spool: Spool,
    pub registry: Registry,
    /// The room of the runs' `SISY_RESULT` directories, made fresh (the previous one removed).
    pub results: Arc<Room>,
}

impl StateDir {
    /// Opens and locks `dir`, then kills what a previous process left behind (step 1).
    pub async fn open_and_sweep(dir: &Path) -> Result<StateDir> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let state = StateDir::open(&dir)?;
            let swept = state.registry.sweep();
            if swept > 0 {
                tracing::warn!(
                    groups = swept,
                    "killed job processes a previous guardian process left behind"
                );
            }
            Ok(state)
        })
        .await
        .context("the start-up sweep of leftover job processes failed")?
    }

    fn open(dir: &Path) -> Result<StateDir> {
        let context = || {
            format!(
                "state_dir: cannot create or use {}: create it and make it writable for the guardian's user, or set state_dir",
                dir.display()
            )
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(context)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .with_context(context)?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow!(
                "state_dir {} is in use by another guardian process on this host ({e}): stop that one, or give each guardian its own state_dir",
                dir.display()
            )
        })?;
        Ok(StateDir {
            _lock: lock,
            spool: Spool::open(dir).with_context(context)?,
            registry: Registry::open(dir).with_context(context)?,
            results: Arc::new(Room::open(dir).with_context(|| {
                format!(
                    "cannot make the directory for the runs' SISY_RESULT files in {}: make it writable for the guardian's user, or point TMPDIR elsewhere",
                    std::env::temp_dir().display()
                )
            })?),
        })
    }
}

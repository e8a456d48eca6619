//! Schema migrations: `sisy db migrate` and `sisy db status`.
//!
//! Owns the ordered list of SQL files under `sql/migrations/` (embedded in the binary) and
//! applying them exactly once, under a session advisory lock, so that a hundred hosts
//! starting at once apply each migration once and the others wait and then find nothing to
//! do. Each migration runs in its own transaction together with its bookkeeping row.
//! Does not own what the schema means (see the SQL files themselves).

use anyhow::{Context, Result, bail};
use tokio_postgres::Client;

/// One versioned SQL file.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Append only: a released file is never edited.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "core",
        sql: include_str!("../sql/migrations/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "control",
        sql: include_str!("../sql/migrations/0002_control.sql"),
    },
    Migration {
        version: 3,
        name: "views",
        sql: include_str!("../sql/migrations/0003_views.sql"),
    },
    // In version order, not appended: the last entry is the version this binary needs.
    Migration {
        version: 5,
        name: "performance",
        sql: include_str!("../sql/migrations/0005_performance.sql"),
    },
    Migration {
        version: 6,
        name: "privileges",
        sql: include_str!("../sql/migrations/0006_privileges.sql"),
    },
];

/// The roles `sisy_admin`, `sisy_guardian`, `sisy_reader` and their grants (idempotent).
pub const ROLES: &str = include_str!("../sql/roles.sql");

/// The schema version this binary needs.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// An arbitrary constant naming the migration lock among the database's advisory locks.
const MIGRATION_LOCK: i64 = 0x5159_5359_4d49_4752;

/// Where a database stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Versions applied, in order.
    pub applied: Vec<i32>,
    /// Versions this binary knows and the database lacks.
    pub pending: Vec<i32>,
}

impl Status {
    pub fn current(&self) -> i32 {
        self.applied.last().copied().unwrap_or(0)
    }
}

/// Applies every pending migration; returns the versions applied now (empty: nothing to do).
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("cannot take the migration lock")?;
    let result = apply_pending(client).await;
    // Unlocking can only fail if the connection is gone, which releases the lock anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn apply_pending(client: &mut Client) -> Result<Vec<i32>> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS sisy;
             CREATE TABLE IF NOT EXISTS sisy.migrations (
                 version    int PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .await
        .context("cannot create the schema sisy: does this user have CREATE on the database?")?;
    let applied = applied_versions(client).await?;
    let mut done = Vec::new();
    // Migrations are applied in version order; a version may be missing from the list
    // (numbers were reserved for work that landed in another order).
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql)
            .await
            .with_context(|| format!("migration {:04}_{} failed", m.version, m.name))?;
        tx.execute(
            "INSERT INTO sisy.migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tx.commit().await?;
        done.push(m.version);
    }
    // Objects a migration created get their grants, where the roles exist.
    if roles_exist(client).await? {
        client
            .batch_execute(ROLES)
            .await
            .context("cannot grant the sisy roles their rights")?;
    }
    Ok(done)
}

async fn roles_exist(client: &Client) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT count(*) = 3 FROM pg_roles WHERE rolname IN ('sisy_admin', 'sisy_guardian', 'sisy_reader')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Creates the three roles (when missing) and grants their rights: `sisy db roles`.
pub async fn roles(client: &mut Client) -> Result<()> {
    ensure_current(client).await?;
    client.batch_execute(ROLES).await.context(
        "cannot set up the roles: run `sisy db roles` as a user with CREATEROLE who owns the schema sisy",
    )
}

async fn applied_versions(client: &Client) -> Result<Vec<i32>> {
    let rows = client
        .query("SELECT version FROM sisy.migrations ORDER BY version", &[])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Reads where the database stands without changing anything.
pub async fn status(client: &Client) -> Result<Status> {
    let exists: bool = client
        .query_one("SELECT to_regclass('sisy.migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    let applied = if exists {
        applied_versions(client).await?
    } else {
        Vec::new()
    };
    let pending = MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    Ok(Status { applied, pending })
}

/// Fails unless the database has exactly the schema this binary needs.
pub async fn ensure_current(client: &Client) -> Result<()> {
    let status = status(client).await?;
    let known = latest_version();
    if !status.pending.is_empty() {
        bail!(
            "the database schema is at version {} and this sisy needs {known}: run `sisy db migrate`",
            status.current()
        );
    }
    if status.current() > known {
        bail!(
            "the database schema is at version {}, newer than this sisy knows ({known}): upgrade sisy on this host",
            status.current()
        );
    }
    Ok(())
}

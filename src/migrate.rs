//! Schema migrations: `sisy db migrate` and `sisy db status`.
//!
//! Owns the ordered list of SQL files under `sql/migrations/` (embedded in the binary) and
//! applying them exactly once, each in its own transaction together with its bookkeeping row
//! under a transaction-level advisory lock, so that a hundred hosts starting at once apply
//! each migration once and the others wait and then find nothing to do; it holds no session
//! state, so it works through a transaction pooler too ([`migrate`]).
//! Does not own what the schema means (see the SQL files themselves).
//!
//! # Rolling upgrades
//!
//! A migration may declare, in a header line `-- compatible-with: N`, that a sisy built for
//! schema version N (its last migration is N) or later still works once it is applied. The
//! declaration is recorded in `sisy.migrations.compatible_with`, so that an *older* binary,
//! which has never seen the file, reads it from the database. A guardian starts when every
//! migration it knows is applied and every applied migration it does not know declared
//! itself compatible with it ([`ensure_current`]). No declaration means "needs a sisy that
//! knows this migration", which is what the migrations before 0007 mean:
//!
//! ```text
//!   applied:  1 2 3 5 6 7 8 | 9 (compatible-with: 8) 10 (compatible-with: 9)
//!   sisy knowing 1..8       -> refuses: 10 needs a sisy built for 9 or later
//!   sisy knowing 1..9       -> starts (10 declared it compatible)
//!   sisy knowing 1..11      -> refuses: 11 is pending, run `sisy db migrate`
//! ```

use anyhow::{Context, Result, bail};
use tokio_postgres::Client;

use crate::db::{self, Session};

/// One versioned SQL file.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The header line through which a migration declares the oldest compatible sisy.
const COMPATIBLE_WITH: &str = "-- compatible-with:";

impl Migration {
    /// The schema version of the oldest sisy that still works once this migration is
    /// applied (its `-- compatible-with: N` header line), or None when only a sisy that
    /// knows this migration does. A malformed declaration is an error (a unit test reads
    /// every migration, so none ships).
    pub fn compatible_with(&self) -> Result<Option<i32>> {
        let mut header = self.sql.lines().take_while(|l| l.starts_with("--"));
        let Some(line) = header.find(|l| l.starts_with(COMPATIBLE_WITH)) else {
            return Ok(None);
        };
        let value = line[COMPATIBLE_WITH.len()..].trim();
        match value.parse::<i32>() {
            Ok(n) if n > 0 && n < self.version => Ok(Some(n)),
            _ => bail!(
                "migration {:04}_{}: '{line}' must name an earlier schema version",
                self.version,
                self.name
            ),
        }
    }
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
    Migration {
        version: 7,
        name: "row_limits",
        sql: include_str!("../sql/migrations/0007_row_limits.sql"),
    },
    Migration {
        version: 8,
        name: "job_sources",
        sql: include_str!("../sql/migrations/0008_job_sources.sql"),
    },
    Migration {
        version: 9,
        name: "flows",
        sql: include_str!("../sql/migrations/0009_flows.sql"),
    },
    Migration {
        version: 10,
        name: "flow_engine",
        sql: include_str!("../sql/migrations/0010_flow_engine.sql"),
    },
    Migration {
        version: 11,
        name: "flow_views",
        sql: include_str!("../sql/migrations/0011_flow_views.sql"),
    },
    Migration {
        version: 12,
        name: "cached_plans",
        sql: include_str!("../sql/migrations/0012_cached_plans.sql"),
    },
    Migration {
        version: 13,
        name: "fleet_leases",
        sql: include_str!("../sql/migrations/0013_fleet_leases.sql"),
    },
    Migration {
        version: 14,
        name: "kill_poll",
        sql: include_str!("../sql/migrations/0014_kill_poll.sql"),
    },
    Migration {
        version: 15,
        name: "one_wakes",
        sql: include_str!("../sql/migrations/0015_one_wakes.sql"),
    },
    Migration {
        version: 16,
        name: "pooled_plans",
        sql: include_str!("../sql/migrations/0016_pooled_plans.sql"),
    },
    Migration {
        version: 17,
        name: "runs_autovacuum",
        sql: include_str!("../sql/migrations/0017_runs_autovacuum.sql"),
    },
    Migration {
        version: 18,
        name: "pending_deadline",
        sql: include_str!("../sql/migrations/0018_pending_deadline.sql"),
    },
    Migration {
        version: 19,
        name: "statement_events",
        sql: include_str!("../sql/migrations/0019_statement_events.sql"),
    },
    Migration {
        version: 20,
        name: "runs_outcome",
        sql: include_str!("../sql/migrations/0020_runs_outcome.sql"),
    },
];

/// The roles `sisy_admin`, `sisy_guardian`, `sisy_reader` and their grants (idempotent).
pub(crate) const ROLES: &str = include_str!("../sql/roles.sql");

/// The schema version this binary needs.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// An arbitrary constant naming the migration lock among the database's advisory locks.
const MIGRATION_LOCK: i64 = 0x5159_5359_4d49_4752;

/// Where a database stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    /// Versions applied, in order.
    pub applied: Vec<i32>,
    /// Versions this binary knows and the database lacks.
    pub pending: Vec<i32>,
    /// Migrations applied by a newer sisy, which this binary does not know.
    pub unknown: Vec<Unknown>,
}

/// A migration applied by a newer sisy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unknown {
    pub version: i32,
    pub name: String,
    /// What it declared (`-- compatible-with: N`); None: needs a sisy that knows it.
    pub compatible_with: Option<i32>,
}

impl Unknown {
    /// Whether this binary still works with it applied.
    pub fn compatible(&self) -> bool {
        self.compatible_with.is_some_and(|n| n <= latest_version())
    }
}

impl Status {
    pub fn current(&self) -> i32 {
        self.applied.last().copied().unwrap_or(0)
    }
}

/// Applies every pending migration; returns the versions applied now (empty: nothing to do).
///
/// One transaction per migration, each under the transaction-level advisory lock: the
/// lock, the bookkeeping table, the list of applied migrations, the migration and its row
/// all live in one transaction, so migrators that start together apply each migration once
/// (the others wait for the lock, then find it applied), and nothing outlives a
/// transaction: it works the same through a transaction pooler such as PgBouncer in
/// `pool_mode = transaction`, where a session lock would be taken on one server
/// connection and released (or not) on another.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    let mut done = Vec::new();
    loop {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await
            .context("cannot take the migration lock")?;
        tx.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS sisy;
             CREATE TABLE IF NOT EXISTS sisy.migrations (
                 version    int PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());
             -- What each migration declares about older binaries (see the module doc).
             ALTER TABLE sisy.migrations ADD COLUMN IF NOT EXISTS compatible_with int;",
        )
        .await
        .context("cannot create the schema sisy: does this user have CREATE on the database?")?;
        let applied: Vec<i32> = applied_rows(&tx).await?.iter().map(|r| r.0).collect();
        // Migrations are applied in version order; a version may be missing from the list
        // (numbers were reserved for work that landed in another order).
        let Some(m) = MIGRATIONS.iter().find(|m| !applied.contains(&m.version)) else {
            // Objects a migration created get their grants, where the roles exist.
            if roles_exist(&tx).await? {
                tx.batch_execute(ROLES)
                    .await
                    .context("cannot grant the sisy roles their rights")?;
            }
            tx.commit().await?;
            return Ok(done);
        };
        let compatible_with = m.compatible_with()?;
        tx.batch_execute(m.sql)
            .await
            .with_context(|| format!("migration {:04}_{} failed", m.version, m.name))?;
        db::execute(
            &tx,
            "INSERT INTO sisy.migrations (version, name, compatible_with) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &compatible_with],
        )
        .await?;
        tx.commit().await?;
        done.push(m.version);
    }
}

async fn roles_exist<S: Session>(client: &S) -> Result<bool> {
    let row = db::query_one(
        client,
        "SELECT count(*) = 3 FROM pg_roles WHERE rolname IN ('sisy_admin', 'sisy_guardian', 'sisy_reader')",
        &[],
    )
    .await?;
    Ok(row.get(0))
}

/// Creates the three roles (when missing) and grants their rights: `sisy db roles`.
pub(crate) async fn roles(client: &mut Client) -> Result<()> {
    ensure_current(client).await?;
    client.batch_execute(ROLES).await.context(
        "cannot set up the roles: run `sisy db roles` as a user with CREATEROLE who owns the schema sisy",
    )
}

/// (version, name, declared compatibility) of every applied migration, in order.
async fn applied_rows<S: Session>(client: &S) -> Result<Vec<(i32, String, Option<i32>)>> {
    let rows = db::query(client, db::q::MIGRATIONS_APPLIED, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Reads where the database stands without changing anything.
pub(crate) async fn status<S: Session>(client: &S) -> Result<Status> {
    let exists: bool = db::query_one(
        client,
        "SELECT to_regclass('sisy.migrations') IS NOT NULL",
        &[],
    )
    .await?
    .get(0);
    let rows = if exists {
        applied_rows(client).await?
    } else {
        Vec::new()
    };
    let known = |v: i32| MIGRATIONS.iter().any(|m| m.version == v);
    let applied: Vec<i32> = rows.iter().map(|r| r.0).collect();
    let pending = MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    let unknown = rows
        .into_iter()
        .filter(|r| !known(r.0))
        .map(|(version, name, compatible_with)| Unknown {
            version,
            name,
            compatible_with,
        })
        .collect();
    Ok(Status {
        applied,
        pending,
        unknown,
    })
}

/// Fails unless this binary works with the database's schema: every migration it knows is
/// applied, and every applied migration it does not know declared itself compatible.
pub(crate) async fn ensure_current<S: Session>(client: &S) -> Result<()> {
    let status = status(client).await?;
    let known = latest_version();
    if !status.pending.is_empty() {
        bail!(
            "the database schema is at version {} and this sisy needs {known}: run `sisy db migrate`",
            status.current()
        );
    }
    let blocking: Vec<String> = status
        .unknown
        .iter()
        .filter(|u| !u.compatible())
        .map(|u| format!("{:04}_{}", u.version, u.name))
        .collect();
    if !blocking.is_empty() {
        bail!(
            "the database schema is at version {}, newer than this sisy knows ({known}), and migration(s) {} do not work with this sisy: upgrade sisy on this host",
            status.current(),
            blocking.join(", ")
        );
    }
    if !status.unknown.is_empty() {
        tracing::warn!(
            schema = status.current(),
            known,
            "the database schema is newer than this sisy, and its newer migrations declared themselves compatible with it: upgrade sisy on this host when convenient"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_declares_a_valid_compatibility() {
        for m in MIGRATIONS {
            m.compatible_with().unwrap_or_else(|e| panic!("{e:#}"));
        }
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    }

    #[test]
    fn declarations_are_read_from_the_header_only() {
        let m = |sql| Migration {
            version: 12,
            name: "x",
            sql,
        };
        assert_eq!(
            m("-- 0012: x\n-- compatible-with: 11\nCREATE TABLE t ();")
                .compatible_with()
                .unwrap(),
            Some(11)
        );
        assert_eq!(
            m("-- 0012\nSELECT 1;\n-- compatible-with: 11")
                .compatible_with()
                .unwrap(),
            None
        );
        assert!(m("-- compatible-with: 12\n").compatible_with().is_err());
        assert!(m("-- compatible-with: six\n").compatible_with().is_err());
    }
}

//! Connections to PostgreSQL and the catalogue of SQL statements.
//!
//! Owns: parsing the database URL, opening single connections and pools (always through
//! [`connect`], [`connect_for_notifications`] or [`pool`], so every connection gets the same
//! TLS and password handling), turning driver errors into sentences a person can act on,
//! and the named queries under `sql/queries/` (loaded with `include_str!`, so the binary
//! carries them). Does not own what the queries mean: each service (scheduler, claimer,
//! heartbeat, …) calls the statements it needs.
//!
//! A connection string is resolved the way libpq does it (`connect.rs`), in three steps: `conninfo` takes
//! out the keys tokio-postgres does not know (`sslmode` verify-ca/verify-full,
//! `sslrootcert`, `passfile`); `tls` turns `sslmode`/`sslrootcert` (else `PGSSLMODE`/
//! `PGSSLROOTCERT`) into a rustls connector; without a password in the string, `PGPASSWORD`
//! and then the password file (`pgpass`) supply it. No message here ever contains the
//! password: errors name the host, port and database, and where the password came from.

mod bounded;
mod connect;
mod conninfo;
mod pgpass;
mod queries;
mod statements;
mod tls;

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, Socket};

pub use bounded::{Conn, checkout, within};
pub(crate) use bounded::{answer_limit, timed_out};
use connect::{Endpoint, process_env};
pub(crate) use conninfo::{env_vars_set, redact_password, url_from_env};
pub use queries::{RUN_STATES, cli, q, web};
pub use statements::{Mode, Session, begin, configure, execute, mode, query, query_one};

/// A connection's driver half, returned by [`connect_for_notifications`] so the caller can
/// poll it for notifications. One concrete type for TCP and Unix sockets, TLS or not.
pub(crate) type Connection = tokio_postgres::Connection<Socket, tls::Stream>;

/// Parses a libpq URL or key=value string into the driver's settings, checking the keys
/// tokio-postgres does not know (`sslmode` verify-ca/verify-full, `sslrootcert`,
/// `passfile`) for syntax only; the environment is not consulted and no file is read, so
/// connect with [`connect`] and friends, not with this config. The error never repeats the
/// password.
pub(crate) fn parse_url(url: &str) -> Result<Config> {
    let split = conninfo::split(url)?;
    let mut config = parse_driver(&split.rest)?;
    if let Some(mode) = &split.sslmode {
        // Never weaker than asked: a verify mode becomes `require` for a caller that
        // connects with this config alone.
        config.ssl_mode(tls::SslMode::parse(mode)?.driver_mode());
    }
    Ok(config)
}

/// A human description of where a config points, for error messages (no password).
pub(crate) fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config.get_hosts().iter().map(host_name).collect();
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
    let (client, connection) = connect_for_notifications(url).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// One connection whose driver half the caller polls (for LISTEN/NOTIFY: the
/// notifications arrive through [`Connection::poll_message`]).
pub async fn connect_for_notifications(url: &str) -> Result<(Client, Connection)> {
    Endpoint::resolve(url, &process_env())?.connect().await
}

/// A pool of connections for the guardian's services.
pub fn pool(url: &str, size: usize) -> Result<Pool> {
    pool_with_lock_limit(url, size, DEFAULT_IDLE_IN_TRANSACTION)
}

/// How long a pooled connection may sit idle inside a transaction before the server ends its
/// session, when the caller does not say ([`pool_with_lock_limit`]).
pub const DEFAULT_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(60);

/// A pool whose sessions the server ends when they sit idle inside a transaction for longer
/// than `idle_in_transaction`. A guardian paused (SIGSTOP, a frozen VM) between two
/// statements of a transaction would otherwise hold its row locks for as long as it is
/// paused: every other guardian would skip the jobs it locked (SKIP LOCKED) and wait on them
/// at admission. The setting is sent with `SET` on each new connection rather than as a
/// startup option, which connection poolers such as PgBouncer refuse by default. Without
/// session state ([`Mode`]: through a transaction pooler, where a connection's `SET` lands
/// on one server connection of many) nothing is sent here: [`begin`] sets the limit in each
/// transaction that takes row locks.
///
/// The same `SET` makes the session plan each prepared statement once, generically
/// (`plan_cache_mode = force_generic_plan`): the guardian runs the same few statements
/// thousands of times, and with custom plans PostgreSQL planned the claim, the admission and
/// the batched result again at every execution (their array parameters keep a custom plan
/// looking cheaper), a third of its CPU under load. None of them filters on a parameter that
/// a partial index's predicate would need to know, and each reads as many buffers with the
/// generic plan as with the custom one (BENCHMARKS.md, "Performance").
pub fn pool_with_lock_limit(url: &str, size: usize, idle_in_transaction: Duration) -> Result<Pool> {
    let set = format!(
        "SET idle_in_transaction_session_timeout = {}; SET plan_cache_mode = force_generic_plan",
        idle_in_transaction.as_millis().max(1)
    );
    pool_with_session(url, size, set)
}

/// A pool for the dashboard (`sisy web`), whose statements are planned for their
/// parameters (`force_custom_plan`): a page's optional filters (`$2 IS NULL OR job_id = …`)
/// each pick their own index, which one generic plan for all of them cannot. The page itself
/// bounds and limits what it runs ([`page`]).
pub fn page_pool(url: &str, size: usize) -> Result<Pool> {
    pool_with_session(
        url,
        size,
        "SET plan_cache_mode = force_custom_plan".to_string(),
    )
}

/// A pool whose new connections first run `set` (when sessions keep state, see [`Mode`]).
fn pool_with_session(url: &str, size: usize, set: String) -> Result<Pool> {
    let endpoint = Endpoint::resolve(url, &process_env())?;
    let limit = endpoint.connect_limit();
    let manager = Manager::from_config(
        endpoint.config,
        endpoint.connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let session_state = statements::mode().session_state;
    let hook = deadpool_postgres::Hook::async_fn(move |client, _| {
        let set = set.clone();
        Box::pin(async move {
            if !session_state {
                return Ok(());
            }
            match tokio::time::timeout(limit, client.batch_execute(&set)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(deadpool_postgres::HookError::Backend(e)),
                Err(_) => Err(deadpool_postgres::HookError::message(
                    "the database did not answer the connection's first statement in time",
                )),
            }
        })
    });
    // A new connection gets the same bound as `connect`'s: a server that accepts and never
    // answers is a failed attempt, not a pool that waits forever.
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(limit))
        .post_create(hook)
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

/// The longest interval a job may set (ttl, jitter, retry_delay, max_runtime, kill_grace),
/// as migration 0007 enforces: 100 years of 365.25 days. Rows from before that limit are
/// clamped to it when read, so that no sum of a due time and a row's intervals can leave the
/// range of a timestamp or of the monotonic clock.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(3_155_760_000);

/// Whether `error` is a failed TLS handshake with the server (an untrusted or expired
/// certificate, a name it is not valid for): a setting to fix, not an outage to wait out.
pub(crate) fn is_tls_failure(error: &anyhow::Error) -> bool {
    tls::handshake_failed(error)
}

/// Converts seconds (as PostgreSQL's `extract(epoch …)` returns them) to a Duration,
/// treating NULL, negatives and NaN as zero and clamping at [`MAX_INTERVAL`] (an infinite
/// interval included).
pub(crate) fn secs(value: Option<f64>) -> Duration {
    match value {
        Some(s) if s > 0.0 => Duration::from_secs_f64(s.min(MAX_INTERVAL.as_secs_f64())),
        _ => Duration::ZERO,
    }
}

/// tokio-postgres's parse, with an error that never quotes the string.
fn parse_driver(url: &str) -> Result<Config> {
    Config::from_str(url).map_err(|e| {
        let text = std::error::Error::source(&e).map_or(e.to_string(), |c| c.to_string());
        // The parser reports the character it did not expect, which may be in the password.
        let cause = text.split(" but got ").next().unwrap_or_default();
        anyhow!(
            "the database URL is not valid ({cause}): write it like \
             postgres://user@host:5432/db or host=... dbname=..."
        )
    })
}

fn host_name(host: &Host) -> String {
    match host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(path) => path.display().to_string(),
    }
}

/// Runs one of the dashboard's statements in a read-only transaction that may last at most
/// `limit` on the server (`statement_timeout`, set for the transaction: it holds through a
/// transaction pooler too). The role's rights already forbid writes to a `sisy_reader`; the
/// transaction forbids them to any role the dashboard is given.
pub async fn read_page(
    client: &Client,
    limit: Duration,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
            limit.as_millis().max(1)
        ))
        .await?;
    // A failed statement leaves its transaction open: the caller must not give the
    // connection back to a pool then (a [`Conn`] that is not released is closed).
    let rows = client.query(sql, params).await?;
    client.batch_execute("COMMIT").await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use tokio_postgres::config::SslMode;

    use super::*;

    #[test]
    fn a_bad_url_is_reported_without_its_password() {
        for url in ["host=h password=s3cret x", "host=h password='s3cret"] {
            let err = parse_url(url).err().unwrap().to_string();
            assert!(err.starts_with("the database URL is not valid ("), "{err}");
            assert!(
                err.contains("unexpected") || err.contains("unterminated"),
                "{err}"
            );
            assert!(!err.contains("s3cret") && !err.contains("but got"), "{err}");
        }
        let err = parse_url("host=h sslmode=verify")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("sslmode \"verify\" is not valid"), "{err}");
        let verify = parse_url("host=h sslmode=verify-ca sslrootcert=/ca.pem").unwrap();
        assert_eq!(verify.get_ssl_mode(), SslMode::Require);
    }
}

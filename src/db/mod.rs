//! Connections to PostgreSQL and the catalogue of SQL statements.
//!
//! Owns: parsing the database URL, opening single connections and pools (always through
//! [`connect`], [`connect_for_notifications`] or [`pool`], so every connection gets the same
//! TLS and password handling), turning driver errors into sentences a person can act on,
//! and the named queries under `sql/queries/` (loaded with `include_str!`, so the binary
//! carries them). Does not own what the queries mean: each service (scheduler, claimer,
//! heartbeat, …) calls the statements it needs.
//!
//! A connection string is resolved the way libpq does it, in three steps: `conninfo` takes
//! out the keys tokio-postgres does not know (`sslmode` verify-ca/verify-full,
//! `sslrootcert`, `passfile`); `tls` turns `sslmode`/`sslrootcert` (else `PGSSLMODE`/
//! `PGSSLROOTCERT`) into a rustls connector; without a password in the string, `PGPASSWORD`
//! and then the password file (`pgpass`) supply it. No message here ever contains the
//! password: errors name the host, port and database, and where the password came from.

mod bounded;
mod conninfo;
mod pgpass;
mod queries;
mod tls;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, Socket};

pub use bounded::{Conn, checkout, within};
pub(crate) use bounded::{answer_limit, timed_out};
use conninfo::var;
pub(crate) use conninfo::{env_vars_set, redact_password, url_from_env};
pub use queries::{cli, q};
use tls::TlsSettings;

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
/// startup option, which connection poolers such as PgBouncer refuse by default.
pub fn pool_with_lock_limit(url: &str, size: usize, idle_in_transaction: Duration) -> Result<Pool> {
    let endpoint = Endpoint::resolve(url, &process_env())?;
    let limit = endpoint.connect_limit();
    let manager = Manager::from_config(
        endpoint.config,
        endpoint.connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let set = format!(
        "SET idle_in_transaction_session_timeout = {}",
        idle_in_transaction.as_millis().max(1)
    );
    let hook = deadpool_postgres::Hook::async_fn(move |client, _| {
        let set = set.clone();
        Box::pin(async move {
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

/// A connection string resolved for connecting: the driver's settings with the password
/// filled in and the TLS mode set, and the connector that checks what the mode promises.
struct Endpoint {
    config: Config,
    connector: tls::Connector,
    /// Where the password came from, for the message when the server rejects it.
    password: PasswordSource,
}

#[derive(Debug, PartialEq, Eq)]
enum PasswordSource {
    ConnectionString,
    Environment,
    File(PathBuf),
    /// A password file exists but was not read: why, and what to do.
    FileIgnored(String),
    None,
}

impl Endpoint {
    /// Resolves `url` as libpq would with the environment `env`.
    fn resolve(url: &str, env: &[(String, String)]) -> Result<Endpoint> {
        let split = conninfo::split(url)?;
        let mut config = parse_driver(&split.rest)?;
        let home = home_dir(env);
        let tls = TlsSettings::resolve(
            split.sslmode.as_deref().or(var(env, "PGSSLMODE")),
            split.sslrootcert.as_deref().or(var(env, "PGSSLROOTCERT")),
            home.as_deref(),
        )?;
        config.ssl_mode(tls.driver_mode());
        let hosts = config.get_hosts();
        if config.get_hostaddrs().is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_))) {
            // PostgreSQL never offers TLS on a Unix socket; libpq does not ask there, and
            // neither do we, so `require` works for local connections as it does with psql.
            config.ssl_mode(SslMode::Disable);
        } else if hosts.is_empty() && tls.driver_mode() != SslMode::Disable {
            if tls.checks_name() {
                bail!(
                    "sslmode=verify-full needs a host name to check the server's certificate \
                     against: add host=<name> next to hostaddr"
                );
            }
            // tokio-postgres refuses a TLS handshake without a host name; the address is
            // the name libpq would use here too (and its password-file key).
            for addr in config.get_hostaddrs().to_vec() {
                config.host(addr.to_string());
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_tcp_user_timeout().is_none() {
            // Over TCP, a peer that stopped acknowledging closes the connection in a minute
            // rather than after the kernel's ~15 minutes of retransmissions (the services
            // also bound their own waits; see `bounded`).
            config.tcp_user_timeout(Duration::from_secs(60));
        }
        let password = fill_password(&mut config, split.passfile.as_deref(), env, home.as_deref());
        if let PasswordSource::FileIgnored(why) = &password {
            tracing::warn!("{why}");
        }
        Ok(Endpoint {
            connector: tls.connector()?,
            config,
            password,
        })
    }

    async fn connect(&self) -> Result<(Client, Connection)> {
        let limit = self.connect_limit();
        match tokio::time::timeout(limit, self.config.connect(self.connector.clone())).await {
            Ok(connected) => connected.map_err(|e| self.connect_error(e)),
            Err(_) => Err(anyhow::Error::new(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            ))
            .context(format!(
                "cannot connect to the database at {}: no answer within {limit:?} \
                 (connect_timeout per host): check the URL, the network and that PostgreSQL is running",
                describe(&self.config)
            ))),
        }
    }

    /// The longest a whole connection attempt may take, handshake and authentication
    /// included, as libpq reads `connect_timeout` (tokio-postgres bounds the socket's
    /// connect only, so a server that accepts and never answers would hang it): the timeout
    /// for each host the string names, one after the other.
    fn connect_limit(&self) -> Duration {
        let per_host = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let hosts = self
            .config
            .get_hosts()
            .len()
            .max(self.config.get_hostaddrs().len())
            .max(1);
        per_host * hosts as u32
    }

    /// The error of a failed connection attempt, as a sentence saying what to do.
    fn connect_error(&self, e: tokio_postgres::Error) -> anyhow::Error {
        let at = describe(&self.config);
        match tls::failure(&e) {
            // The connector's sentence is in the chain; keeping the driver's error there
            // lets callers tell a connection failure from others (see `outage`).
            Some(tls::Failure::Handshake) => {
                return anyhow::Error::new(e)
                    .context(format!("cannot connect to the database at {at}"));
            }
            Some(tls::Failure::NotOffered) => {
                return anyhow!(
                    "cannot connect to the database at {at}: the server does not accept TLS \
                     connections: turn on ssl in its postgresql.conf, or lower sslmode"
                );
            }
            None => {}
        }
        let rejected = e
            .as_db_error()
            .is_some_and(|db| db.code() == &tokio_postgres::error::SqlState::INVALID_PASSWORD);
        // The driver's words when the server asks for a password and it has none.
        let missing =
            std::error::Error::source(&e).is_some_and(|c| c.to_string() == "password missing");
        let hint = match &self.password {
            PasswordSource::ConnectionString => "check the password in the database URL".into(),
            PasswordSource::Environment => "check PGPASSWORD".into(),
            PasswordSource::File(path) => format!("check the password in {}", path.display()),
            PasswordSource::FileIgnored(why) => why.clone(),
            PasswordSource::None => "give the password in the database URL, PGPASSWORD or a \
                password file (~/.pgpass, PGPASSFILE)"
                .into(),
        };
        if rejected {
            anyhow!(
                "cannot connect to the database at {at}: {}: {hint}",
                error_message(&e)
            )
        } else if missing {
            anyhow!(
                "cannot connect to the database at {at}: the server asks for a password and none was found: {hint}"
            )
        } else {
            anyhow::Error::new(e).context(format!(
                "cannot connect to the database at {at}: check the URL and that PostgreSQL is running"
            ))
        }
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

/// Sets the password from `PGPASSWORD` or the password file when the string has none.
fn fill_password(
    config: &mut Config,
    passfile: Option<&str>,
    env: &[(String, String)],
    home: Option<&Path>,
) -> PasswordSource {
    if config.get_password().is_some() {
        return PasswordSource::ConnectionString;
    }
    if let Some(password) = var(env, "PGPASSWORD") {
        config.password(password);
        return PasswordSource::Environment;
    }
    let Some(path) = pgpass::path(passfile.or(var(env, "PGPASSFILE")), home) else {
        return PasswordSource::None;
    };
    let Some(user) = config.get_user().map(str::to_string).or_else(os_user_name) else {
        return PasswordSource::None;
    };
    let dbname = config.get_dbname().unwrap_or(&user).to_string();
    let ports = config.get_ports().to_vec();
    // libpq's key is `host`, else `hostaddr`, else `localhost` (the empty name).
    let mut hosts: Vec<String> = config.get_hosts().iter().map(host_name).collect();
    if hosts.is_empty() {
        hosts = config
            .get_hostaddrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
    }
    if hosts.is_empty() {
        hosts.push(String::new());
    }
    // tokio-postgres has one password for all hosts, where libpq looks one up per host:
    // the first host that has a line decides.
    for (i, host) in hosts.iter().enumerate() {
        let key = pgpass::Key {
            host,
            port: ports.get(i).or(ports.first()).copied().unwrap_or(5432),
            dbname: &dbname,
            user: &user,
        };
        match pgpass::lookup(&path, key) {
            pgpass::Lookup::Found(password) => {
                config.password(password);
                return PasswordSource::File(path);
            }
            pgpass::Lookup::Ignored(why) => return PasswordSource::FileIgnored(why),
            pgpass::Lookup::NotFound => {}
        }
    }
    PasswordSource::None
}

fn host_name(host: &Host) -> String {
    match host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(path) => path.display().to_string(),
    }
}

/// The process environment; variables that are not UTF-8 are skipped (none of ours is).
fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// `$HOME`, else the home directory in the user database, as libpq looks for it.
fn home_dir(env: &[(String, String)]) -> Option<PathBuf> {
    var(env, "HOME").map(PathBuf::from).or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
    })
}

/// The user tokio-postgres logs in as when the string names none.
fn os_user_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        // HOME points nowhere, so the tester's ~/.pgpass and root.crt stay out of it.
        let mut env = vec![("HOME".to_string(), "/nonexistent".to_string())];
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    fn resolve(url: &str, vars: &[(&str, &str)]) -> Result<Endpoint> {
        Endpoint::resolve(url, &env(vars))
    }

    #[test]
    fn sslmode_comes_from_the_string_else_pgsslmode() {
        let tcp = "host=db.example dbname=d";
        let mode =
            |url: &str, vars: &[(&str, &str)]| resolve(url, vars).unwrap().config.get_ssl_mode();
        assert_eq!(mode(tcp, &[]), SslMode::Prefer);
        assert_eq!(mode(tcp, &[("PGSSLMODE", "require")]), SslMode::Require);
        assert_eq!(mode(tcp, &[("PGSSLMODE", "")]), SslMode::Prefer);
        let given = "postgres://db.example/d?sslmode=disable";
        assert_eq!(mode(given, &[("PGSSLMODE", "require")]), SslMode::Disable);
        let err = resolve(tcp, &[("PGSSLMODE", "verify-full")]).err().unwrap();
        assert!(err.to_string().contains("set sslrootcert="), "{err}");
    }

    #[test]
    fn unix_sockets_never_ask_for_tls() {
        let local = resolve("host=/run/postgresql sslmode=require", &[]).unwrap();
        assert_eq!(local.config.get_ssl_mode(), SslMode::Disable);
        let mixed = resolve("host=/run/postgresql,db.example sslmode=require", &[]).unwrap();
        assert_eq!(mixed.config.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn a_bare_address_is_the_tls_name_except_for_verify_full() {
        let endpoint = resolve("hostaddr=192.0.2.7 sslmode=require", &[]).unwrap();
        let hosts = endpoint.config.get_hosts();
        assert_eq!(hosts, [Host::Tcp("192.0.2.7".into())]);
        let url = "hostaddr=192.0.2.7 sslmode=verify-full sslrootcert=/ca.pem";
        let err = resolve(url, &[]).err().unwrap().to_string();
        assert!(err.contains("add host=<name> next to hostaddr"), "{err}");
    }

    #[test]
    fn the_password_comes_from_the_string_then_pgpassword_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "db.example:5433:d:u:from-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let passfile = ("PGPASSFILE", file.to_str().unwrap());
        let url = "host=db.example port=5433 user=u dbname=d";
        let password = |url: &str, vars: &[(&str, &str)]| {
            let endpoint = resolve(url, vars).unwrap();
            let password = endpoint.config.get_password().map(|p| p.to_vec());
            (
                password.map(|p| String::from_utf8(p).unwrap()),
                endpoint.password,
            )
        };
        assert_eq!(
            password(url, &[passfile]),
            (Some("from-file".into()), PasswordSource::File(file.clone()))
        );
        assert_eq!(
            password(url, &[passfile, ("PGPASSWORD", "from-env")]),
            (Some("from-env".into()), PasswordSource::Environment)
        );
        let with = format!("{url} password=given");
        assert_eq!(
            password(&with, &[passfile, ("PGPASSWORD", "from-env")]),
            (Some("given".into()), PasswordSource::ConnectionString)
        );
        // Without `host`, the key is the address (here with TLS off, so no name is derived).
        let by_addr = format!(
            "hostaddr=192.0.2.7 port=5433 user=u dbname=d sslmode=disable passfile={}",
            file.display()
        );
        std::fs::write(&file, "192.0.2.7:5433:d:u:by-address\n").unwrap();
        assert_eq!(password(&by_addr, &[]).0.as_deref(), Some("by-address"));
        std::fs::write(&file, "db.example:5433:d:u:from-file\n").unwrap();
        // The `passfile` key wins over PGPASSFILE; no line matches another port.
        let key = format!(
            "host=db.example user=u dbname=d passfile={}",
            file.display()
        );
        assert_eq!(password(&key, &[]), (None, PasswordSource::None));
        let port = format!("{key} port=5433");
        assert_eq!(
            password(&port, &[("PGPASSFILE", "/x")]).0.as_deref(),
            Some("from-file")
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let (none, source) = password(url, &[passfile]);
        assert_eq!(none, None);
        assert!(matches!(source, PasswordSource::FileIgnored(why) if why.contains("chmod 0600")));
    }

    #[test]
    fn a_connection_attempt_is_bounded_by_connect_timeout_per_host() {
        let limit = |url: &str| resolve(url, &[]).unwrap().connect_limit();
        assert_eq!(limit("host=db.example"), Duration::from_secs(10));
        assert_eq!(
            limit("host=a.example,b.example connect_timeout=3"),
            Duration::from_secs(6)
        );
    }

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

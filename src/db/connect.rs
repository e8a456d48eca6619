//! Resolving a connection string the way libpq does, and opening one connection.
//!
//! Owns the [`Endpoint`]: the driver's settings with the TLS mode decided (a Unix socket never
//! asks for TLS; a bare address is the TLS name), the timeouts libpq would apply
//! (`connect_timeout` per host, a TCP user timeout), and the password filled in from the
//! string, `PGPASSWORD` or the password file, remembering where it came from so that a
//! rejected login says which to check. Also the words of a failed connection attempt. Does
//! not own the string's syntax (`conninfo`), the TLS connector (`tls`), the password file's
//! format (`pgpass`) nor pools (the parent module builds them from an endpoint).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config};

use super::conninfo::{self, var};
use super::tls::{self, TlsSettings};
use super::{Connection, describe, error_message, host_name, parse_driver, pgpass};

/// A connection string resolved for connecting: the driver's settings with the password
/// filled in and the TLS mode set, and the connector that checks what the mode promises.
pub(super) struct Endpoint {
    pub(super) config: Config,
    pub(super) connector: tls::Connector,
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
    pub(super) fn resolve(url: &str, env: &[(String, String)]) -> Result<Endpoint> {
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

    pub(super) async fn connect(&self) -> Result<(Client, Connection)> {
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
    pub(super) fn connect_limit(&self) -> Duration {
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

/// The process environment; variables that are not UTF-8 are skipped (none of ours is).
pub(super) fn process_env() -> Vec<(String, String)> {
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
}

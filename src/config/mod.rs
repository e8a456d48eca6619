//! The guardian's configuration: reading `guardian.toml`, applying `SISY_*` environment
//! overrides and the libpq `PG*` fallback for the database, validating every value once at
//! start-up, and showing the effective result with the database password hidden. A file
//! that users other than root (or the guardian's own) could change is refused (`trust`).
//!
//! It owns the key names, their defaults and the wording of every configuration error (each
//! names the file and key, or the variable, and says what is expected). It deliberately does
//! not connect to the database, resolve `run_as` users, bind the metrics address or create
//! `state_dir`: those belong to `db`, `supervisor`, the metrics server and the spool, which
//! report their own failures. Reloading on SIGHUP is calling [`GuardianConfig::load`] again
//! and merging the result with [`GuardianConfig::reload`], which says which keys a running
//! guardian applies and which need a restart.
//!
//! Reading is serde's: `parse` lays the `SISY_*` variables over the file's table and
//! deserializes it into `parse::Settings`, one checking deserializer per kind of value;
//! [`GuardianConfig::load`] then resolves what needs more than one key or a fallback (the
//! lease against the heartbeat, the `PG*` variables, the computed defaults) in one pass.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use toml::Value;

use parse::{Inputs, KEYS, format_size};

mod parse;
#[cfg(test)]
mod tests;
mod trust;

/// Where the guardian looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/sisyphus/guardian.toml";

/// How the guardian writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event, for a terminal or the journal.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// The word used for this format in the config file and `SISY_LOG_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// The validated settings of one guardian. Built only by [`GuardianConfig::load`] (or by
/// tests), so every value in it has passed the checks below. Its `Debug` hides the
/// database password.
#[derive(Clone)]
pub struct GuardianConfig {
    /// The libpq-style URL or key=value string as given (may be multi-host).
    pub database_url: String,
    /// This guardian's row in `sisy.hosts`.
    pub host_name: String,
    /// The pools whose jobs this guardian runs; never empty.
    pub pools: Vec<String>,
    /// Most runs this guardian has running at once; at least 1.
    pub capacity: usize,
    /// The user a run with `run_as` NULL runs as; always allowed.
    pub default_user: String,
    /// Further users a job may name in `run_as`.
    pub allowed_users: Vec<String>,
    /// Bytes of output kept per run (the last ones); at least 1.
    pub output_limit: usize,
    pub heartbeat_interval: Duration,
    /// At least twice `heartbeat_interval`.
    pub lease: Duration,
    pub shutdown_grace: Duration,
    /// `None` disables the Prometheus endpoint.
    pub metrics_listen: Option<SocketAddr>,
    pub history_retention: Duration,
    /// Where the local result spool lives; absolute.
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
    /// LISTEN for wake-ups and kill requests on a connection of its own (true), or find them
    /// with the dispatcher's poll every `poll_interval` (false: through a transaction pooler).
    pub listen: bool,
    /// Named prepared statements, kept per connection (true), or unnamed ones, one round
    /// trip each (false: through a pooler that does not track prepared statements).
    pub prepared_statements: bool,
    /// With `listen = false`: how often the dispatcher looks for triggered runs and kill
    /// requests; 100 ms to 1 h.
    pub poll_interval: Duration,
    /// The connections of the guardian's main pool (the heartbeat has one of its own).
    pub pool_size: usize,
    /// The file this configuration was read from (None: the default path, if it existed);
    /// a reload reads it again.
    pub path: Option<PathBuf>,
}

impl std::fmt::Debug for GuardianConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardianConfig")
            .field(
                "database_url",
                &crate::db::redact_password(&self.database_url),
            )
            .field("host_name", &self.host_name)
            .field("pools", &self.pools)
            .field("capacity", &self.capacity)
            .field("default_user", &self.default_user)
            .field("allowed_users", &self.allowed_users)
            .field("output_limit", &self.output_limit)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("lease", &self.lease)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("metrics_listen", &self.metrics_listen)
            .field("history_retention", &self.history_retention)
            .field("state_dir", &self.state_dir)
            .field("log_format", &self.log_format)
            .field("listen", &self.listen)
            .field("prepared_statements", &self.prepared_statements)
            .field("poll_interval", &self.poll_interval)
            .field("pool_size", &self.pool_size)
            .field("path", &self.path)
            .finish()
    }
}

/// A configuration read again while the guardian runs, merged with the running one.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The configuration to run with from now on.
    pub config: GuardianConfig,
    /// Keys whose new value is applied.
    pub applied: Vec<&'static str>,
    /// Keys whose new value needs a restart; their old value is kept.
    pub kept: Vec<&'static str>,
}

impl GuardianConfig {
    /// Reads the TOML file (if `path` is Some it must exist; if None, [`DEFAULT_PATH`] is
    /// read when it exists and ignored when not), then applies overrides from `env`
    /// (pass `std::env::vars()` collected in production, a Vec in tests).
    pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<GuardianConfig> {
        let inputs = Inputs::read(path, env)?;
        let settings = inputs.settings()?;
        check_lease(&inputs, settings.lease, settings.heartbeat_interval)?;
        let database_url = match settings.database_url {
            Some(url) => url,
            None => database_url_from_env(env, path)?,
        };
        let computed = |key: &str, default: fn() -> Result<String, String>| {
            default().map_err(|msg| anyhow!("{key}: {msg}"))
        };
        let host_name = match settings.host_name {
            Some(name) => name,
            None => computed("host_name", default_host_name)?,
        };
        let default_user = match settings.default_user {
            Some(name) => name,
            None => computed("default_user", default_user)?,
        };
        Ok(GuardianConfig {
            database_url,
            host_name,
            pools: settings.pools,
            capacity: settings.capacity,
            default_user,
            allowed_users: settings.allowed_users,
            output_limit: settings.output_limit,
            heartbeat_interval: settings.heartbeat_interval,
            lease: settings.lease,
            shutdown_grace: settings.shutdown_grace,
            metrics_listen: settings.metrics_listen,
            history_retention: settings.history_retention,
            state_dir: settings.state_dir,
            log_format: settings.log_format,
            listen: settings.listen,
            prepared_statements: settings.prepared_statements,
            poll_interval: settings.poll_interval,
            pool_size: settings.pool_size,
            path: path.map(Path::to_path_buf),
        })
    }

    /// Merges `new` (the file and environment read again) into this running configuration.
    /// Applied at once: `pools`, `capacity`, `default_user`, `allowed_users`, `output_limit`,
    /// `heartbeat_interval`, `lease`, `shutdown_grace`, `history_retention`, `poll_interval`.
    /// Kept until a restart: `database_url`, `host_name`, `state_dir`, `metrics_listen`,
    /// `log_format`, `listen`, `prepared_statements`, `pool_size` (what the process is,
    /// where it keeps state, where and how it connects or listens).
    pub fn reload(&self, new: GuardianConfig) -> Reload {
        let mut applied = Vec::new();
        let mut kept = Vec::new();
        let mut config = new;
        macro_rules! live {
            ($($field:ident),*) => {$(
                if config.$field != self.$field {
                    applied.push(stringify!($field));
                }
            )*};
        }
        macro_rules! fixed {
            ($($field:ident),*) => {$(
                if config.$field != self.$field {
                    kept.push(stringify!($field));
                    config.$field = self.$field.clone();
                }
            )*};
        }
        live!(
            pools,
            capacity,
            default_user,
            allowed_users,
            output_limit,
            heartbeat_interval,
            lease,
            shutdown_grace,
            history_retention,
            poll_interval
        );
        fixed!(
            database_url,
            host_name,
            state_dir,
            metrics_listen,
            log_format,
            listen,
            prepared_statements,
            pool_size
        );
        config.path = self.path.clone();
        Reload {
            config,
            applied,
            kept,
        }
    }

    /// The effective configuration as TOML text with the database password redacted (for
    /// `--check-config`). Loading the text again gives the same configuration.
    pub fn to_redacted_toml(&self) -> String {
        let string = |s: &str| Value::String(s.to_string());
        let list = |l: &[String]| Value::Array(l.iter().map(|s| string(s)).collect());
        let duration = |d| string(&humantime::format_duration(d).to_string());
        let listen = self
            .metrics_listen
            .map(|a| a.to_string())
            .unwrap_or_default();
        let values = [
            string(&crate::db::redact_password(&self.database_url)),
            string(&self.host_name),
            list(&self.pools),
            Value::Integer(i64::try_from(self.capacity).unwrap_or(i64::MAX)),
            string(&self.default_user),
            list(&self.allowed_users),
            format_size(self.output_limit),
            duration(self.heartbeat_interval),
            duration(self.lease),
            duration(self.shutdown_grace),
            string(&listen),
            duration(self.history_retention),
            string(&self.state_dir.to_string_lossy()),
            string(self.log_format.as_str()),
            Value::Boolean(self.listen),
            Value::Boolean(self.prepared_statements),
            duration(self.poll_interval),
            Value::Integer(i64::try_from(self.pool_size).unwrap_or(i64::MAX)),
        ];
        // `Value`'s Display is its TOML form, quoting and escaping included.
        KEYS.iter()
            .zip(values)
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect()
    }
}

/// A host is declared dead when its lease runs out, so the lease must survive at least one
/// late or missed heartbeat.
fn check_lease(inputs: &Inputs, lease: Duration, heartbeat: Duration) -> Result<()> {
    if lease >= heartbeat.saturating_mul(2) {
        return Ok(());
    }
    bail!(
        "lease ({}, from {}) must be at least 2 x heartbeat_interval ({}, from {}): \
         raise lease or lower heartbeat_interval",
        humantime::format_duration(lease),
        inputs.source("lease"),
        humantime::format_duration(heartbeat),
        inputs.source("heartbeat_interval"),
    )
}

/// Without `database_url` or `SISY_DATABASE_URL`: the libpq variables, checked as the key.
fn database_url_from_env(env: &[(String, String)], path: Option<&Path>) -> Result<String> {
    let Some(url) = crate::db::url_from_env(env) else {
        bail!(
            "no database configured: set database_url in {}, SISY_DATABASE_URL \
             or the PG* environment variables",
            path.unwrap_or(Path::new(DEFAULT_PATH)).display()
        );
    };
    let set = crate::db::env_vars_set(env);
    parse::validate_database_url(&url)
        .with_context(|| format!("PG* environment variables ({})", set.join(", ")))?;
    Ok(url)
}

fn default_host_name() -> Result<String, String> {
    let name = nix::unistd::gethostname()
        .map_err(|e| format!("cannot read the machine's host name ({e}): set host_name"))?;
    match name.into_string() {
        Ok(name) if !name.is_empty() => Ok(name),
        _ => Err("the machine's host name is empty or not UTF-8: set host_name".to_string()),
    }
}

/// `nobody` for a root guardian, so nothing runs as root unless someone wrote `root`;
/// otherwise the guardian's own user, the only one it can run jobs as.
fn default_user() -> Result<String, String> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return Ok("nobody".to_string());
    }
    match nix::unistd::User::from_uid(euid) {
        Ok(Some(user)) => Ok(user.name),
        _ => Err(format!(
            "uid {euid} has no name in the user database: set default_user"
        )),
    }
}

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

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use toml::Value;

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
        let file = ConfigFile::read(path)?;
        let inputs = Inputs {
            file: file.as_ref(),
            env,
        };
        let file_hint = path.map_or(DEFAULT_PATH.to_string(), |p| p.display().to_string());

        let heartbeat_interval = inputs
            .get("heartbeat_interval", parse_positive_duration)?
            .unwrap_or(Duration::from_secs(5));
        let lease = inputs
            .get("lease", parse_duration)?
            .unwrap_or(Duration::from_secs(30));
        check_lease(&inputs, lease, heartbeat_interval)?;

        Ok(GuardianConfig {
            database_url: database_url(&inputs, env, &file_hint)?,
            host_name: inputs.get_or("host_name", parse_name, default_host_name)?,
            pools: inputs
                .get("pools", parse_pools)?
                .unwrap_or_else(|| vec!["default".into()]),
            capacity: inputs.get("capacity", parse_capacity)?.unwrap_or(16),
            default_user: inputs.get_or("default_user", parse_name, default_user)?,
            allowed_users: inputs.get("allowed_users", parse_list)?.unwrap_or_default(),
            output_limit: inputs.get("output_limit", parse_size)?.unwrap_or(64 * 1024),
            heartbeat_interval,
            lease,
            shutdown_grace: inputs
                .get("shutdown_grace", parse_duration)?
                .unwrap_or(Duration::from_secs(30)),
            metrics_listen: inputs.get("metrics_listen", parse_listen)?.flatten(),
            history_retention: inputs
                .get("history_retention", parse_positive_duration)?
                .unwrap_or(Duration::from_secs(30 * 86_400)),
            state_dir: inputs
                .get("state_dir", parse_dir)?
                .unwrap_or_else(|| PathBuf::from("/var/lib/sisyphus")),
            log_format: inputs
                .get("log_format", parse_log_format)?
                .unwrap_or_default(),
            path: path.map(Path::to_path_buf),
        })
    }

    /// Merges `new` (the file and environment read again) into this running configuration.
    /// Applied at once: `pools`, `capacity`, `default_user`, `allowed_users`, `output_limit`,
    /// `heartbeat_interval`, `lease`, `shutdown_grace`, `history_retention`. Kept until a
    /// restart: `database_url`, `host_name`, `state_dir`, `metrics_listen`, `log_format`
    /// (what the process is, where it keeps state and where it connects or listens).
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
            history_retention
        );
        fixed!(
            database_url,
            host_name,
            state_dir,
            metrics_listen,
            log_format
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
        ];
        // `Value`'s Display is its TOML form, quoting and escaping included.
        KEYS.iter()
            .zip(values)
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect()
    }
}

/// Every key the file may contain, in the order of the fields (`to_redacted_toml` relies
/// on it).
const KEYS: [&str; 14] = [
    "database_url",
    "host_name",
    "pools",
    "capacity",
    "default_user",
    "allowed_users",
    "output_limit",
    "heartbeat_interval",
    "lease",
    "shutdown_grace",
    "metrics_listen",
    "history_retention",
    "state_dir",
    "log_format",
];

/// Durations beyond this are typos, and would overflow timer arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);
/// PostgreSQL cannot store a text value larger than 1 GB, so more output cannot be kept.
const MAX_OUTPUT_LIMIT: usize = 1024 * 1024 * 1024;
const SIZE_UNITS: [(&str, usize); 7] = [
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
];

/// A parsed config file: its path (for messages) and its top-level table.
struct ConfigFile {
    path: PathBuf,
    table: toml::Table,
}

impl ConfigFile {
    fn read(path: Option<&Path>) -> Result<Option<ConfigFile>> {
        let (path, required) = match path {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        trust::check(path)?;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("{}: cannot read the config file: {e}", path.display()),
        };
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| anyhow!("{}: {}", path.display(), describe_toml_error(&text, &e)))?;
        let unknown: Vec<String> = table
            .keys()
            .filter(|k| !KEYS.contains(&k.as_str()))
            .map(|k| format!("{k:?}"))
            .collect();
        if !unknown.is_empty() {
            let s = if unknown.len() == 1 { "" } else { "s" };
            bail!(
                "{}: unknown key{s} {} (known keys: {})",
                path.display(),
                unknown.join(", "),
                KEYS.join(", ")
            );
        }
        Ok(Some(ConfigFile {
            path: path.to_path_buf(),
            table,
        }))
    }
}

/// Only the position and the parser's message: toml's own rendering quotes the offending
/// line, which may be the one holding the database password.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return format!("invalid TOML: {}", e.message().trim());
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!(
        "line {line}, column {column}: invalid TOML: {}",
        e.message().trim()
    )
}

/// The raw settings: the file's table and the environment, environment first.
struct Inputs<'a> {
    file: Option<&'a ConfigFile>,
    env: &'a [(String, String)],
}

impl<'a> Inputs<'a> {
    /// The raw value of `key` and the file it came from (None: the environment, where
    /// every value is a string).
    fn raw(&self, key: &'static str) -> Option<(Value, Option<&'a Path>)> {
        if let Some(value) = env_value(self.env, &env_var(key)) {
            return Some((Value::String(value.to_string()), None));
        }
        let file = self.file?;
        Some((file.table.get(key)?.clone(), Some(file.path.as_path())))
    }

    /// The parsed value of `key`, or None when it is not set anywhere.
    fn get<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&Value) -> Result<T, String>,
    ) -> Result<Option<T>> {
        let Some((value, path)) = self.raw(key) else {
            return Ok(None);
        };
        parse(&value).map(Some).map_err(|msg| match path {
            Some(path) => anyhow!("{}: {key}: {msg}", path.display()),
            None => anyhow!("{}: {msg}", env_var(key)),
        })
    }

    /// Like `get`, with a default that is only computed (and can only fail) when needed.
    fn get_or<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&Value) -> Result<T, String>,
        default: impl FnOnce() -> Result<T, String>,
    ) -> Result<T> {
        match self.get(key, parse)? {
            Some(value) => Ok(value),
            None => default().map_err(|msg| anyhow!("{key}: {msg}")),
        }
    }

    /// Where `key` came from, in words, for messages about two keys at once.
    fn source(&self, key: &'static str) -> String {
        match self.raw(key) {
            Some((_, Some(path))) => path.display().to_string(),
            Some((_, None)) => env_var(key),
            None => "the default".to_string(),
        }
    }
}

/// The variable that overrides `key`: `SISY_` and the key in capitals.
fn env_var(key: &str) -> String {
    format!("SISY_{}", key.to_ascii_uppercase())
}

/// The last value of `name` in `env`, as a later assignment overrides an earlier one.
fn env_value<'e>(env: &'e [(String, String)], name: &str) -> Option<&'e str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
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

/// `database_url` / `SISY_DATABASE_URL`, else the libpq variables, validated either way.
fn database_url(inputs: &Inputs, env: &[(String, String)], file_hint: &str) -> Result<String> {
    if let Some(url) = inputs.get("database_url", parse_database_url)? {
        return Ok(url);
    }
    let Some(url) = crate::db::url_from_env(env) else {
        bail!(
            "no database configured: set database_url in {file_hint}, SISY_DATABASE_URL \
             or the PG* environment variables"
        );
    };
    let set = crate::db::env_vars_set(env);
    validate_database_url(&url)
        .with_context(|| format!("PG* environment variables ({})", set.join(", ")))?;
    Ok(url)
}

fn parse_database_url(value: &Value) -> Result<String, String> {
    // Never echo the value: it may hold a password.
    let Value::String(url) = value else {
        return Err(format!(
            "expected a connection string, got a(n) {}",
            value.type_str()
        ));
    };
    if url.trim().is_empty() {
        return Err(
            "expected a connection string, got an empty string (unset it to use \
                    the PG* environment variables)"
                .to_string(),
        );
    }
    validate_database_url(url).map_err(|e| e.to_string())?;
    Ok(url.clone())
}

/// Parses like the `db` module will, and adds the checks tokio-postgres only makes when
/// connecting, so a bad URL stops start-up instead of failing every reconnection.
fn validate_database_url(url: &str) -> Result<()> {
    // The same parser the connections use: it knows libpq's keys the driver does not
    // (sslmode verify-ca/verify-full, sslrootcert, passfile) and never repeats the password.
    let config = crate::db::parse_url(url)?;
    let (hosts, addrs) = (config.get_hosts().len(), config.get_hostaddrs().len());
    if hosts == 0 && addrs == 0 {
        bail!("no host given: add host=... (a name, an address or a socket directory)");
    }
    if hosts != 0 && addrs != 0 && hosts != addrs {
        bail!("{hosts} host(s) but {addrs} hostaddr(s): give one hostaddr per host");
    }
    let ports = config.get_ports().len();
    if ports > 1 && ports != hosts.max(addrs) {
        bail!(
            "{ports} ports for {} host(s): give one port, or one per host",
            hosts.max(addrs)
        );
    }
    Ok(())
}

/// The message for a bad value: what was expected, and the value.
fn expected(what: &str, value: &Value) -> String {
    format!("expected {what}, got {}", got(value))
}

/// How a bad value is shown back: strings quoted, lists and tables by their kind.
fn got(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => value.to_string(),
        Value::Datetime(_) => "a date".to_string(),
        Value::Array(_) => "a list".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

/// A user, host or pool name: not empty, and no stray spaces that would never match.
fn parse_name(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) if !s.is_empty() && s.trim() == s => Ok(s.clone()),
        _ => Err(expected(
            "a non-empty name without surrounding spaces",
            value,
        )),
    }
}

/// A list of names: a TOML array of strings, or one comma-separated string (the form the
/// environment can carry). Duplicates are dropped; order is kept.
fn parse_list(value: &Value) -> Result<Vec<String>, String> {
    let names: Vec<Value> = match value {
        Value::Array(items) => items.clone(),
        Value::String(s) if s.trim().is_empty() => Vec::new(),
        Value::String(s) => s
            .split(',')
            .map(|n| Value::String(n.trim().to_string()))
            .collect(),
        _ => return Err(expected("a list of names like [\"a\", \"b\"]", value)),
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for name in &names {
        let name = parse_name(name)
            .map_err(|_| expected("a list of non-empty names like [\"a\", \"b\"]", value))?;
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    Ok(out)
}

fn parse_pools(value: &Value) -> Result<Vec<String>, String> {
    let pools = parse_list(value)?;
    if pools.is_empty() {
        return Err("expected at least one pool name, got an empty list".to_string());
    }
    Ok(pools)
}

fn parse_capacity(value: &Value) -> Result<usize, String> {
    let n = match value {
        Value::Integer(n) => usize::try_from(*n).ok(),
        Value::String(s) => s.trim().parse::<usize>().ok(),
        _ => None,
    };
    n.filter(|n| *n >= 1)
        .ok_or_else(|| expected("a whole number >= 1", value))
}

/// A byte count, or a whole number with one of [`SIZE_UNITS`].
fn parse_size(value: &Value) -> Result<usize, String> {
    let bytes = match value {
        Value::Integer(n) => usize::try_from(*n).ok(),
        Value::String(s) => size_from_str(s.trim()),
        _ => None,
    };
    match bytes {
        Some(0) | None => Err(expected(
            "a size of at least 1 byte such as 65536, \"512B\", \"10KB\", \"64KiB\" or \
             \"1MiB\" (units: B, KB, KiB, MB, MiB, GB, GiB)",
            value,
        )),
        Some(n) if n > MAX_OUTPUT_LIMIT => Err(expected(
            "at most 1GiB (the most PostgreSQL stores in one value)",
            value,
        )),
        Some(n) => Ok(n),
    }
}

fn size_from_str(s: &str) -> Option<usize> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let number: usize = s[..digits].parse().ok()?;
    let unit = s[digits..].trim_start();
    if unit.is_empty() {
        return Some(number);
    }
    let (_, factor) = SIZE_UNITS.iter().find(|(name, _)| *name == unit)?;
    number.checked_mul(*factor)
}

/// The largest unit that divides `bytes` exactly, so the text reads back to the same value.
fn format_size(bytes: usize) -> Value {
    let mut binary = SIZE_UNITS.iter().filter(|(name, _)| name.ends_with("iB"));
    match binary.find(|(_, factor)| bytes.is_multiple_of(*factor)) {
        Some((name, factor)) => Value::String(format!("{}{name}", bytes / factor)),
        None => Value::Integer(i64::try_from(bytes).unwrap_or(i64::MAX)),
    }
}

fn parse_duration(value: &Value) -> Result<Duration, String> {
    const WHAT: &str = "a duration such as \"5s\", \"2m\", \"7d\" or \"1h30m\"";
    let bare_number = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.');
    let text = match value {
        Value::String(s) if !bare_number(s.trim()) => s.trim(),
        Value::String(_) | Value::Integer(_) => return Err(expected(WHAT, value) + ": add a unit"),
        _ => return Err(expected(WHAT, value)),
    };
    match humantime::parse_duration(text) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(expected("a duration of at most 100 years", value)),
        Err(_) => Err(expected(WHAT, value)),
    }
}

fn parse_positive_duration(value: &Value) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d.is_zero() {
        return Err(expected("a duration above zero", value));
    }
    Ok(d)
}

/// `""` disables the endpoint; `":9187"` listens on every IPv4 interface, as with
/// Prometheus exporters.
fn parse_listen(value: &Value) -> Result<Option<SocketAddr>, String> {
    let parsed = match value {
        Value::String(s) if s.is_empty() => return Ok(None),
        Value::String(s) => match s.strip_prefix(':') {
            Some(port) => port
                .parse()
                .ok()
                .map(|p| SocketAddr::from((Ipv4Addr::UNSPECIFIED, p))),
            None => s.parse().ok(),
        },
        _ => None,
    };
    let what = "an address and port such as \"127.0.0.1:9187\", \"[::1]:9187\" or \":9187\", \
                or \"\" to disable";
    parsed.map(Some).ok_or_else(|| expected(what, value))
}

/// The spool must not depend on the directory the guardian happens to start in.
fn parse_dir(value: &Value) -> Result<PathBuf, String> {
    match value {
        Value::String(s) if Path::new(s).is_absolute() => Ok(PathBuf::from(s)),
        _ => Err(expected("an absolute directory path", value)),
    }
}

fn parse_log_format(value: &Value) -> Result<LogFormat, String> {
    match value.as_str() {
        Some("human") => Ok(LogFormat::Human),
        Some("json") => Ok(LogFormat::Json),
        _ => Err(expected("\"human\" or \"json\"", value)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::str::FromStr;

    const URL: &str = "postgres://sisy:hunter2@db.example/sisy";

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    /// Loads `text` as the config file with `vars` as the environment.
    fn load(text: &str, vars: &[(&str, &str)]) -> (Result<GuardianConfig>, String) {
        let f = file(text);
        let path = f.path().display().to_string();
        (GuardianConfig::load(Some(f.path()), &env(vars)), path)
    }

    /// The error of loading `text` with `vars`, and the file's path to compare against.
    fn error(text: &str, vars: &[(&str, &str)]) -> (String, String) {
        let (result, path) = load(text, vars);
        (
            format!("{:#}", result.expect_err("loading should fail")),
            path,
        )
    }

    fn with_url(text: &str) -> String {
        format!("database_url = {URL:?}\n{text}")
    }

    #[test]
    fn debug_output_hides_the_password() {
        let env = vec![("SISY_DATABASE_URL".to_string(), URL.to_string())];
        let config = GuardianConfig::load(None, &env).unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("db.example"),
            "{shown}"
        );
    }

    #[test]
    fn verify_modes_and_root_certificates_are_accepted_in_the_url() {
        let url =
            "host=db.example dbname=sisy sslmode=verify-full sslrootcert=/etc/sisyphus/ca.pem";
        let env = vec![("SISY_DATABASE_URL".to_string(), url.to_string())];
        assert_eq!(GuardianConfig::load(None, &env).unwrap().database_url, url);
    }

    #[test]
    fn defaults() {
        let (config, _) = load("", &[("SISY_DATABASE_URL", URL)]);
        let config = config.unwrap();
        assert_eq!(config.database_url, URL);
        assert_eq!(config.host_name, default_host_name().unwrap());
        assert!(!config.host_name.is_empty());
        assert_eq!(config.pools, ["default"]);
        assert_eq!(config.capacity, 16);
        let expected_user = if nix::unistd::geteuid().is_root() {
            "nobody".to_string()
        } else {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .unwrap()
                .unwrap()
                .name
        };
        assert_eq!(config.default_user, expected_user);
        assert!(config.allowed_users.is_empty());
        assert_eq!(config.output_limit, 65536);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.lease, Duration::from_secs(30));
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.history_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(config.state_dir, Path::new("/var/lib/sisyphus"));
        assert_eq!(config.log_format, LogFormat::Human);
    }

    #[test]
    fn file_values() {
        let text = r#"
            database_url = "host=db1,db2 user=sisy target_session_attrs=read-write"
            host_name = "web-1"
            pools = ["web", "batch", "web"]
            capacity = 4
            default_user = "cron"
            allowed_users = ["backup", "root"]
            output_limit = "1MiB"
            heartbeat_interval = "2s"
            lease = "1h30m"
            shutdown_grace = "2m"
            metrics_listen = "127.0.0.1:9187"
            history_retention = "7d"
            state_dir = "/srv/sisyphus"
            log_format = "json"
        "#;
        let config = load(text, &[]).0.unwrap();
        assert_eq!(
            config.database_url,
            "host=db1,db2 user=sisy target_session_attrs=read-write"
        );
        assert_eq!(config.host_name, "web-1");
        assert_eq!(config.pools, ["web", "batch"], "duplicates are dropped");
        assert_eq!(config.capacity, 4);
        assert_eq!(config.default_user, "cron");
        assert_eq!(config.allowed_users, ["backup", "root"]);
        assert_eq!(config.output_limit, 1 << 20);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(config.lease, Duration::from_secs(5400));
        assert_eq!(config.shutdown_grace, Duration::from_secs(120));
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9187".parse().unwrap())
        );
        assert_eq!(config.history_retention, Duration::from_secs(7 * 86_400));
        assert_eq!(config.state_dir, Path::new("/srv/sisyphus"));
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn environment_overrides_file() {
        let text = with_url(
            "capacity = 4\npools = [\"web\"]\nmetrics_listen = \"127.0.0.1:9187\"\n\
             allowed_users = [\"backup\"]\nlog_format = \"json\"",
        );
        let vars = [
            ("SISY_DATABASE_URL", "host=other user=me"),
            ("SISY_CAPACITY", "8"),
            ("SISY_POOLS", " a, b ,c"),
            ("SISY_HEARTBEAT_INTERVAL", "1s"),
            ("SISY_LEASE", "3s"),
            ("SISY_METRICS_LISTEN", ""),
            ("SISY_ALLOWED_USERS", ""),
            ("SISY_OUTPUT_LIMIT", "10KB"),
            ("SISY_HOST_NAME", "from-env"),
            ("SISY_STATE_DIR", "/tmp/spool"),
            ("SISY_LOG_FORMAT", "human"),
            ("SISY_JOB", "jobs get this one; the guardian ignores it"),
            ("SISY_CAPACITY", "9"),
        ];
        let config = load(&text, &vars).0.unwrap();
        assert_eq!(config.database_url, "host=other user=me");
        assert_eq!(config.capacity, 9, "the last assignment wins");
        assert_eq!(config.pools, ["a", "b", "c"]);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(config.lease, Duration::from_secs(3));
        assert_eq!(
            config.metrics_listen, None,
            "\"\" disables the file's endpoint"
        );
        assert!(config.allowed_users.is_empty());
        assert_eq!(config.output_limit, 10_000);
        assert_eq!(config.host_name, "from-env");
        assert_eq!(config.state_dir, Path::new("/tmp/spool"));
        assert_eq!(config.log_format, LogFormat::Human);
    }

    #[test]
    fn unknown_key() {
        let (msg, path) = error(&with_url("capacty = 4"), &[]);
        assert_eq!(
            msg,
            format!(
                "{path}: unknown key \"capacty\" (known keys: database_url, host_name, pools, \
                 capacity, default_user, allowed_users, output_limit, heartbeat_interval, lease, \
                 shutdown_grace, metrics_listen, history_retention, state_dir, log_format)"
            )
        );
        let (msg, path) = error("foo = 1\n[guardian]\ncapacity = 4", &[]);
        assert!(
            msg.starts_with(&format!("{path}: unknown keys \"foo\", \"guardian\" (")),
            "{msg}"
        );
    }

    #[test]
    fn bad_duration() {
        let (msg, path) = error(&with_url("lease = \"soon\""), &[]);
        assert_eq!(
            msg,
            format!(
                "{path}: lease: expected a duration such as \"5s\", \"2m\", \"7d\" or \"1h30m\", \
                 got \"soon\""
            )
        );
        let (msg, path) = error(&with_url("shutdown_grace = true"), &[]);
        assert!(
            msg.starts_with(&format!("{path}: shutdown_grace: expected a duration")),
            "{msg}"
        );
        assert!(msg.ends_with("got true"), "{msg}");
        let (msg, _) = error(&with_url(""), &[("SISY_HISTORY_RETENTION", "0s")]);
        assert_eq!(
            msg,
            "SISY_HISTORY_RETENTION: expected a duration above zero, got \"0s\""
        );
        let (msg, _) = error(&with_url(""), &[("SISY_SHUTDOWN_GRACE", "1000y")]);
        assert_eq!(
            msg,
            "SISY_SHUTDOWN_GRACE: expected a duration of at most 100 years, got \"1000y\""
        );
    }

    #[test]
    fn bare_number_duration() {
        let (msg, path) = error(&with_url("heartbeat_interval = 5"), &[]);
        assert_eq!(
            msg,
            format!(
                "{path}: heartbeat_interval: expected a duration such as \"5s\", \"2m\", \"7d\" \
                 or \"1h30m\", got 5: add a unit"
            )
        );
        let (msg, _) = error(&with_url(""), &[("SISY_LEASE", "30")]);
        assert!(msg.starts_with("SISY_LEASE: expected a duration"), "{msg}");
        assert!(msg.ends_with("got \"30\": add a unit"), "{msg}");
    }

    #[test]
    fn sizes() {
        let cases = [
            ("65536", 65536),
            ("\"65536\"", 65536),
            ("\"64KiB\"", 65536),
            ("\"64 KiB\"", 65536),
            ("\"1MiB\"", 1 << 20),
            ("\"512B\"", 512),
            ("\"10KB\"", 10_000),
            ("\"2MB\"", 2_000_000),
            ("\"1GiB\"", 1 << 30),
        ];
        for (text, bytes) in cases {
            let config = load(&with_url(&format!("output_limit = {text}")), &[])
                .0
                .unwrap();
            assert_eq!(config.output_limit, bytes, "{text}");
        }
    }

    #[test]
    fn bad_size() {
        let (msg, path) = error(&with_url("output_limit = \"64 kilobytes\""), &[]);
        assert_eq!(
            msg,
            format!(
                "{path}: output_limit: expected a size of at least 1 byte such as 65536, \
                 \"512B\", \"10KB\", \"64KiB\" or \"1MiB\" (units: B, KB, KiB, MB, MiB, GB, GiB), \
                 got \"64 kilobytes\""
            )
        );
        for bad in [
            "0",
            "0KiB",
            "-1",
            "1.5MiB",
            "kib",
            "64kib",
            "99999999999999999999GiB",
        ] {
            let (msg, _) = error(&with_url(""), &[("SISY_OUTPUT_LIMIT", bad)]);
            assert!(
                msg.starts_with("SISY_OUTPUT_LIMIT: expected a size of at least 1"),
                "{msg}"
            );
        }
        let (msg, path) = error(&with_url("output_limit = 0"), &[]);
        assert!(
            msg.starts_with(&format!("{path}: output_limit: expected a size")),
            "{msg}"
        );
        assert!(msg.ends_with("got 0"), "{msg}");
        let (msg, _) = error(&with_url(""), &[("SISY_OUTPUT_LIMIT", "2GiB")]);
        assert_eq!(
            msg,
            "SISY_OUTPUT_LIMIT: expected at most 1GiB (the most PostgreSQL stores in one value), \
             got \"2GiB\""
        );
    }

    #[test]
    fn capacity_zero_and_not_a_number() {
        let (msg, path) = error(&with_url("capacity = 0"), &[]);
        assert_eq!(
            msg,
            format!("{path}: capacity: expected a whole number >= 1, got 0")
        );
        let (msg, _) = error(&with_url(""), &[("SISY_CAPACITY", "many")]);
        assert_eq!(
            msg,
            "SISY_CAPACITY: expected a whole number >= 1, got \"many\""
        );
        let (msg, path) = error(&with_url("capacity = 2.5"), &[]);
        assert_eq!(
            msg,
            format!("{path}: capacity: expected a whole number >= 1, got 2.5")
        );
    }

    #[test]
    fn lease_shorter_than_two_heartbeats() {
        let (msg, path) = error(
            &with_url("lease = \"10s\""),
            &[("SISY_HEARTBEAT_INTERVAL", "6s")],
        );
        assert_eq!(
            msg,
            format!(
                "lease (10s, from {path}) must be at least 2 x heartbeat_interval (6s, from \
                 SISY_HEARTBEAT_INTERVAL): raise lease or lower heartbeat_interval"
            )
        );
        let (msg, _) = error(&with_url(""), &[("SISY_HEARTBEAT_INTERVAL", "20s")]);
        assert!(
            msg.starts_with("lease (30s, from the default) must be"),
            "{msg}"
        );
        assert!(
            load(
                &with_url("lease = \"10s\"\nheartbeat_interval = \"5s\""),
                &[]
            )
            .0
            .is_ok()
        );
    }

    #[test]
    fn empty_pools_and_names() {
        let (msg, path) = error(&with_url("pools = []"), &[]);
        assert_eq!(
            msg,
            format!("{path}: pools: expected at least one pool name, got an empty list")
        );
        let (msg, _) = error(&with_url(""), &[("SISY_POOLS", " ")]);
        assert_eq!(
            msg,
            "SISY_POOLS: expected at least one pool name, got an empty list"
        );
        let (msg, path) = error(&with_url("pools = [\"a\", \"\"]"), &[]);
        assert_eq!(
            msg,
            format!(
                "{path}: pools: expected a list of non-empty names like [\"a\", \"b\"], got a list"
            )
        );
        let (msg, _) = error(&with_url(""), &[("SISY_ALLOWED_USERS", "a,,b")]);
        assert!(
            msg.starts_with("SISY_ALLOWED_USERS: expected a list of non-empty names"),
            "{msg}"
        );
        let (msg, path) = error(&with_url("pools = 3"), &[]);
        assert_eq!(
            msg,
            format!("{path}: pools: expected a list of names like [\"a\", \"b\"], got 3")
        );
        let (msg, path) = error(&with_url("host_name = \"\""), &[]);
        assert_eq!(
            msg,
            format!(
                "{path}: host_name: expected a non-empty name without surrounding spaces, got \"\""
            )
        );
        let (msg, _) = error(&with_url(""), &[("SISY_DEFAULT_USER", " cron")]);
        assert!(
            msg.starts_with("SISY_DEFAULT_USER: expected a non-empty name"),
            "{msg}"
        );
    }

    #[test]
    fn metrics_addresses() {
        let (msg, path) = error(&with_url("metrics_listen = \"localhost:9187\""), &[]);
        assert_eq!(
            msg,
            format!(
                "{path}: metrics_listen: expected an address and port such as \"127.0.0.1:9187\", \
                 \"[::1]:9187\" or \":9187\", or \"\" to disable, got \"localhost:9187\""
            )
        );
        let (msg, _) = error(&with_url(""), &[("SISY_METRICS_LISTEN", "9187")]);
        assert!(
            msg.starts_with("SISY_METRICS_LISTEN: expected an address and port"),
            "{msg}"
        );
        for (text, addr) in [(":9187", "0.0.0.0:9187"), ("[::1]:9100", "[::1]:9100")] {
            let config = load(&with_url(""), &[("SISY_METRICS_LISTEN", text)])
                .0
                .unwrap();
            assert_eq!(config.metrics_listen, Some(addr.parse().unwrap()));
        }
    }

    #[test]
    fn bad_log_format_and_state_dir() {
        let (msg, path) = error(&with_url("log_format = \"JSON\""), &[]);
        assert_eq!(
            msg,
            format!("{path}: log_format: expected \"human\" or \"json\", got \"JSON\"")
        );
        let (msg, _) = error(&with_url(""), &[("SISY_STATE_DIR", "spool")]);
        assert_eq!(
            msg,
            "SISY_STATE_DIR: expected an absolute directory path, got \"spool\""
        );
    }

    #[test]
    fn missing_explicit_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guardian.toml");
        let result = GuardianConfig::load(Some(&path), &env(&[("SISY_DATABASE_URL", URL)]));
        let msg = format!("{:#}", result.unwrap_err());
        assert!(
            msg.starts_with(&format!(
                "{}: cannot read the config file: ",
                path.display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn missing_default_file_is_ignored() {
        if Path::new(DEFAULT_PATH).exists() {
            return; // this machine has a real configuration; nothing to show here
        }
        let config = GuardianConfig::load(None, &env(&[("SISY_DATABASE_URL", URL)])).unwrap();
        assert_eq!(config.capacity, 16);
        let msg = format!("{:#}", GuardianConfig::load(None, &[]).unwrap_err());
        assert!(
            msg.contains(&format!("set database_url in {DEFAULT_PATH},")),
            "{msg}"
        );
    }

    #[test]
    fn bad_toml_syntax_does_not_show_the_password() {
        let (msg, path) = error(
            "capacity = 4\ndatabase_url = \"postgres://u:hunter2@h/db\n",
            &[],
        );
        assert!(
            msg.starts_with(&format!("{path}: line 2, column ")),
            "{msg}"
        );
        assert!(msg.contains("invalid TOML: "), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn libpq_fallback() {
        let vars = [
            ("PGHOST", "db1,db2"),
            ("PGPORT", "5432,5433"),
            ("PGUSER", "sisy"),
            ("PGPASSWORD", r"it's a \ secret"),
            ("PGDATABASE", "jobs"),
            ("PGSSLMODE", ""),
            ("PGTARGETSESSIONATTRS", "read-write"),
        ];
        let config = load("", &vars).0.unwrap();
        assert_eq!(
            config.database_url,
            r"host='db1,db2' port='5432,5433' dbname='jobs' user='sisy' password='it\'s a \\ secret' target_session_attrs='read-write'"
        );
        let parsed = tokio_postgres::Config::from_str(&config.database_url).unwrap();
        assert_eq!(parsed.get_password(), Some(&br"it's a \ secret"[..]));
        assert_eq!(parsed.get_hosts().len(), 2);
        assert!(config.to_redacted_toml().contains("password=***"));
        assert!(!config.to_redacted_toml().contains("secret"));

        let config = load("", &[("PGDATABASE", "jobs")]).0.unwrap();
        assert_eq!(
            config.database_url,
            "host=/var/run/postgresql dbname='jobs'"
        );
        let (msg, _) = error(
            "",
            &[("PGHOST", "h"), ("PGPORT", "x"), ("PGPASSWORD", "hunter2")],
        );
        assert_eq!(
            msg,
            "PG* environment variables (PGHOST, PGPORT, PGPASSWORD): the database URL is not valid \
             (invalid value for option `port`): write it like postgres://user@host:5432/db or host=... dbname=..."
        );
        let with_url = load(&with_url(""), &[("PGHOST", "ignored")]).0.unwrap();
        assert_eq!(with_url.database_url, URL, "database_url wins over PG*");
    }

    #[test]
    fn no_database_configured() {
        let (msg, path) = error(
            "capacity = 2",
            &[("PGPASSWORD", ""), ("SISY_CAPACITY", "3")],
        );
        assert_eq!(
            msg,
            format!(
                "no database configured: set database_url in {path}, SISY_DATABASE_URL or the \
                 PG* environment variables"
            )
        );
    }

    #[test]
    fn bad_database_url_names_the_key_and_hides_the_password() {
        let (msg, path) = error("database_url = \"postgres://u:hunter2@h:notaport/db\"", &[]);
        assert_eq!(
            msg,
            format!(
                "{path}: database_url: the database URL is not valid (invalid value for option `port`): \
                 write it like postgres://user@host:5432/db or host=... dbname=..."
            )
        );
        let cases = [
            (
                "password=hunter2 host=h port=abc",
                "invalid value for option `port`",
            ),
            (
                "password=hunter2 host=h colour=blue",
                "unknown option `colour`",
            ),
            ("host=h password hunter2", "expected `=`"),
            (
                "password=hunter2 user=u",
                "no host given: add host=... (a name, an address or a socket directory)",
            ),
            (
                "postgres://u:hunter2@/db",
                "no host given: add host=... (a name, an address or a socket directory)",
            ),
            (
                "host=a,b port=1,2,3 password=hunter2",
                "3 ports for 2 host(s): give one port, or one per host",
            ),
            (
                "host=a,b hostaddr=127.0.0.1",
                "2 host(s) but 1 hostaddr(s): give one hostaddr per host",
            ),
        ];
        for (url, expected) in cases {
            let (msg, _) = error("", &[("SISY_DATABASE_URL", url)]);
            assert!(msg.starts_with("SISY_DATABASE_URL: "), "{url}: {msg}");
            assert!(msg.contains(expected), "{url}: {msg}");
            assert!(!msg.contains("hunter2"), "{url}: {msg}");
        }
        let (msg, path) = error("database_url = 5", &[]);
        assert_eq!(
            msg,
            format!("{path}: database_url: expected a connection string, got a(n) integer")
        );
        let (msg, _) = error("", &[("SISY_DATABASE_URL", "")]);
        assert!(msg.starts_with("SISY_DATABASE_URL: expected a connection string, got an empty"));
    }

    #[test]
    fn redacted_toml_hides_the_password_and_reads_back() {
        let text = with_url(
            "pools = [\"web\", \"batch\"]\ncapacity = 3\noutput_limit = \"10KB\"\n\
             metrics_listen = \":9187\"\nlease = \"1h30m\"\nlog_format = \"json\"\n\
             allowed_users = [\"backup\"]",
        );
        let config = load(&text, &[]).0.unwrap();
        let shown = config.to_redacted_toml();
        assert!(
            shown.contains("database_url = \"postgres://sisy:***@db.example/sisy\"\n"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.starts_with("database_url = "),
            "keys in the documented order: {shown}"
        );
        assert!(shown.contains("output_limit = 10000\n"), "{shown}");
        assert!(shown.contains("lease = \"1h 30m\"\n"), "{shown}");

        let again = load(&shown, &[]).0.unwrap();
        assert_eq!(again.database_url, "postgres://sisy:***@db.example/sisy");
        assert_eq!(again.to_redacted_toml(), shown);
        assert_eq!(again.pools, config.pools);
        assert_eq!(again.capacity, 3);
        assert_eq!(again.output_limit, 10_000);
        assert_eq!(again.lease, config.lease);
        assert_eq!(again.history_retention, config.history_retention);
        assert_eq!(again.metrics_listen, config.metrics_listen);
        assert_eq!(again.log_format, LogFormat::Json);
        assert_eq!(again.host_name, config.host_name);
        assert_eq!(again.default_user, config.default_user);

        let kv = load("", &[("SISY_DATABASE_URL", "host=h password='a b' user=u")])
            .0
            .unwrap();
        assert!(
            kv.to_redacted_toml()
                .contains("database_url = \"host=h password=*** user=u\"")
        );
    }

    #[test]
    fn format_size_reads_back() {
        assert_eq!(format_size(65536), Value::String("64KiB".into()));
        assert_eq!(format_size(3 << 20), Value::String("3MiB".into()));
        assert_eq!(format_size(1 << 30), Value::String("1GiB".into()));
        assert_eq!(format_size(1000), Value::Integer(1000));
    }

    #[test]
    fn reload_applies_live_keys_and_keeps_the_rest() {
        let old = load(&with_url("host_name = \"a\"\ncapacity = 2"), &[])
            .0
            .unwrap();
        let new = load(
            "database_url = \"postgres://other/db\"\nhost_name = \"b\"\ncapacity = 5\n\
             pools = [\"x\", \"y\"]\nallowed_users = [\"backup\"]",
            &[],
        )
        .0
        .unwrap();
        let reload = old.reload(new);
        assert_eq!(reload.applied, ["pools", "capacity", "allowed_users"]);
        assert_eq!(reload.kept, ["database_url", "host_name"]);
        assert_eq!(reload.config.capacity, 5);
        assert_eq!(reload.config.pools, ["x", "y"]);
        assert_eq!(reload.config.host_name, "a");
        assert_eq!(reload.config.database_url, URL);
        assert_eq!(reload.config.path, old.path);
    }
}

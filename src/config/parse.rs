//! Reading the settings: the file's TOML and the `SISY_*` overrides merged into one table,
//! then deserialized into [`Settings`] by serde's derive, with one deserializer per kind of
//! value (names, lists, counts, sizes, durations, addresses, paths, the connection string).
//! Each deserializer says what it expected and what it got; [`Inputs::settings`] puts the
//! key in front (the file and key, or the variable), so every message names its source.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde::de::{Deserialize, Deserializer, Error as _};
use toml::Value;

use super::{DEFAULT_PATH, LogFormat, trust};

/// Every key the file may contain, in the order of [`Settings`]' fields (the order
/// `to_redacted_toml` prints them in).
pub(super) const KEYS: [&str; 18] = [
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
    "listen",
    "prepared_statements",
    "poll_interval",
    "pool_size",
];

/// The bounds of `poll_interval`: more often is a load on the database (or the pooler)
/// for nothing, less often is no longer a wake-up.
const MIN_POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(3600);
/// The most connections one guardian's main pool may open: a guardian runs its statements
/// one service at a time, so more are never used and only cost the database.
const MAX_POOL_SIZE: usize = 64;
/// The fewest: the dispatcher, the recorder and start-up may each hold one at once.
const MIN_POOL_SIZE: usize = 2;

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

/// The settings as given, each value checked, each missing key at its default. The keys
/// left as `None` have a default that is computed (and can fail) only when needed, or a
/// fallback (`database_url`: the `PG*` variables); `GuardianConfig::load` resolves them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Settings {
    #[serde(default, deserialize_with = "some_connection_string")]
    pub database_url: Option<String>,
    #[serde(default, deserialize_with = "some_name")]
    pub host_name: Option<String>,
    #[serde(default = "default_pools", deserialize_with = "pools")]
    pub pools: Vec<String>,
    #[serde(default = "default_capacity", deserialize_with = "capacity")]
    pub capacity: usize,
    #[serde(default, deserialize_with = "some_name")]
    pub default_user: Option<String>,
    #[serde(default, deserialize_with = "names")]
    pub allowed_users: Vec<String>,
    #[serde(default = "default_output_limit", deserialize_with = "size")]
    pub output_limit: usize,
    #[serde(default = "default_heartbeat", deserialize_with = "positive_duration")]
    pub heartbeat_interval: Duration,
    #[serde(default = "thirty_seconds", deserialize_with = "duration")]
    pub lease: Duration,
    #[serde(default = "thirty_seconds", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    #[serde(default, deserialize_with = "listen")]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default = "default_retention", deserialize_with = "positive_duration")]
    pub history_retention: Duration,
    #[serde(default = "default_state_dir", deserialize_with = "dir")]
    pub state_dir: PathBuf,
    #[serde(default, deserialize_with = "log_format")]
    pub log_format: LogFormat,
    #[serde(default = "yes", deserialize_with = "boolean")]
    pub listen: bool,
    #[serde(default = "yes", deserialize_with = "boolean")]
    pub prepared_statements: bool,
    #[serde(default = "one_second", deserialize_with = "poll")]
    pub poll_interval: Duration,
    #[serde(default = "default_pool_size", deserialize_with = "pool_size")]
    pub pool_size: usize,
}

fn yes() -> bool {
    true
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn default_pool_size() -> usize {
    6
}

fn default_pools() -> Vec<String> {
    vec!["default".into()]
}
fn default_capacity() -> usize {
    16
}
fn default_output_limit() -> usize {
    64 * 1024
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(5)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/sisyphus")
}

/// The raw settings: the file's table with the environment's values laid over it, and
/// where each came from.
pub(super) struct Inputs {
    table: toml::Table,
    /// The file read, if any.
    file: Option<PathBuf>,
    /// The keys whose value is a `SISY_*` variable's.
    from_env: BTreeSet<&'static str>,
}

impl Inputs {
    /// Reads the file (see `GuardianConfig::load` for which) and lays the `SISY_*`
    /// variables of `env` over it.
    pub fn read(path: Option<&Path>, env: &[(String, String)]) -> Result<Inputs> {
        let (mut table, file) = match read_file(path)? {
            Some((table, file)) => (table, Some(file)),
            None => (toml::Table::new(), None),
        };
        let mut from_env = BTreeSet::new();
        for key in KEYS {
            // The last assignment wins; an empty value counts (`SISY_METRICS_LISTEN=""`
            // turns the endpoint off).
            let var = env_var(key);
            if let Some((_, value)) = env.iter().rev().find(|(k, _)| *k == var) {
                table.insert(key.to_string(), Value::String(value.clone()));
                from_env.insert(key);
            }
        }
        Ok(Inputs {
            table,
            file,
            from_env,
        })
    }

    /// The settings, or the first bad value named by its file and key or its variable.
    pub fn settings(&self) -> Result<Settings> {
        // From TOML text, not from the table's `Value`: that deserializer hands a date over
        // as a string, and a date is not a name. The text may hold the password: only
        // `message()` of an error is used, never its rendering of the text.
        let text =
            toml::to_string(&self.table).map_err(|e| anyhow!("cannot merge the settings: {e}"))?;
        let document = toml::de::Deserializer::parse(&text)
            .map_err(|e| anyhow!("cannot merge the settings: {}", e.message()))?;
        serde_path_to_error::deserialize(document).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().message().trim();
            match KEYS.iter().find(|k| **k == key) {
                Some(key) => self.error(key, message),
                None => anyhow!("{}: {message}", self.source_of_file()),
            }
        })
    }

    /// An error about the value of `key`, prefixed with where the value came from.
    fn error(&self, key: &'static str, message: impl std::fmt::Display) -> anyhow::Error {
        if self.from_env.contains(key) {
            anyhow!("{}: {message}", env_var(key))
        } else {
            anyhow!("{}: {key}: {message}", self.source_of_file())
        }
    }

    /// Where `key` came from, in words, for messages about two keys at once.
    pub fn source(&self, key: &'static str) -> String {
        if self.from_env.contains(key) {
            env_var(key)
        } else if self.table.contains_key(key) {
            self.source_of_file()
        } else {
            "the default".to_string()
        }
    }

    fn source_of_file(&self) -> String {
        let file = self.file.as_deref().unwrap_or(Path::new(DEFAULT_PATH));
        file.display().to_string()
    }
}

/// The variable that overrides `key`: `SISY_` and the key in capitals.
fn env_var(key: &str) -> String {
    format!("SISY_{}", key.to_ascii_uppercase())
}

/// The file's top-level table, after the trust check; None when `path` is None and the
/// default file does not exist. Unknown keys are all named at once (serde's
/// `deny_unknown_fields` would stop at the first).
fn read_file(path: Option<&Path>) -> Result<Option<(toml::Table, PathBuf)>> {
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
    Ok(Some((table, path.to_path_buf())))
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

/// Deserializes a value as TOML and checks it with `check`, whose message becomes the
/// error. Environment values arrive as strings, so every check takes those too.
fn checked<'de, D: Deserializer<'de>, T>(
    d: D,
    check: fn(&Value) -> Result<T, String>,
) -> Result<T, D::Error> {
    check(&Value::deserialize(d)?).map_err(D::Error::custom)
}

/// `deserialize_with` adaptors, one per kind of value (serde names them as strings).
macro_rules! deserializers {
    ($($name:ident: $t:ty = $check:expr;)*) => {$(
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
            checked(d, $check)
        }
    )*};
}

deserializers! {
    some_connection_string: Option<String> = |v| connection_string(v).map(Some);
    some_name: Option<String> = |v| name(v).map(Some);
    names: Vec<String> = list;
    pools: Vec<String> = pool_list;
    capacity: usize = count;
    size: usize = byte_size;
    duration: Duration = any_duration;
    positive_duration: Duration = nonzero_duration;
    listen: Option<SocketAddr> = address;
    dir: PathBuf = absolute_dir;
    log_format: LogFormat = format_word;
    boolean: bool = yes_or_no;
    poll: Duration = poll_duration;
    pool_size: usize = pool_count;
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

/// Checked as the connections will parse it, plus what tokio-postgres only checks when
/// connecting, so a bad URL stops start-up instead of failing every reconnection.
fn connection_string(value: &Value) -> Result<String, String> {
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

/// The checks of a connection string, wherever it came from.
pub(super) fn validate_database_url(url: &str) -> Result<()> {
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

/// A user, host or pool name: not empty, and no stray spaces that would never match.
fn name(value: &Value) -> Result<String, String> {
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
fn list(value: &Value) -> Result<Vec<String>, String> {
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
    for item in &names {
        let item = name(item)
            .map_err(|_| expected("a list of non-empty names like [\"a\", \"b\"]", value))?;
        if seen.insert(item.clone()) {
            out.push(item);
        }
    }
    Ok(out)
}

fn pool_list(value: &Value) -> Result<Vec<String>, String> {
    let pools = list(value)?;
    if pools.is_empty() {
        return Err("expected at least one pool name, got an empty list".to_string());
    }
    Ok(pools)
}

fn count(value: &Value) -> Result<usize, String> {
    let n = match value {
        Value::Integer(n) => usize::try_from(*n).ok(),
        Value::String(s) => s.trim().parse::<usize>().ok(),
        _ => None,
    };
    n.filter(|n| *n >= 1)
        .ok_or_else(|| expected("a whole number >= 1", value))
}

/// A byte count, or a whole number with one of [`SIZE_UNITS`].
fn byte_size(value: &Value) -> Result<usize, String> {
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
pub(super) fn format_size(bytes: usize) -> Value {
    let mut binary = SIZE_UNITS.iter().filter(|(name, _)| name.ends_with("iB"));
    match binary.find(|(_, factor)| bytes.is_multiple_of(*factor)) {
        Some((name, factor)) => Value::String(format!("{}{name}", bytes / factor)),
        None => Value::Integer(i64::try_from(bytes).unwrap_or(i64::MAX)),
    }
}

/// A humantime duration with its unit: a bare number is refused, as its unit is a guess.
fn any_duration(value: &Value) -> Result<Duration, String> {
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

fn nonzero_duration(value: &Value) -> Result<Duration, String> {
    let d = any_duration(value)?;
    if d.is_zero() {
        return Err(expected("a duration above zero", value));
    }
    Ok(d)
}

/// `""` disables the endpoint; `":9187"` listens on every IPv4 interface, as with
/// Prometheus exporters.
fn address(value: &Value) -> Result<Option<SocketAddr>, String> {
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
fn absolute_dir(value: &Value) -> Result<PathBuf, String> {
    match value {
        Value::String(s) if Path::new(s).is_absolute() => Ok(PathBuf::from(s)),
        _ => Err(expected("an absolute directory path", value)),
    }
}

fn format_word(value: &Value) -> Result<LogFormat, String> {
    match value.as_str() {
        Some("human") => Ok(LogFormat::Human),
        Some("json") => Ok(LogFormat::Json),
        _ => Err(expected("\"human\" or \"json\"", value)),
    }
}

/// `true` or `false` (a string from the environment: "true" or "false").
fn yes_or_no(value: &Value) -> Result<bool, String> {
    match value {
        Value::Boolean(b) => Ok(*b),
        Value::String(s) if s.trim() == "true" => Ok(true),
        Value::String(s) if s.trim() == "false" => Ok(false),
        _ => Err(expected("true or false", value)),
    }
}

fn poll_duration(value: &Value) -> Result<Duration, String> {
    let d = any_duration(value)?;
    if !(MIN_POLL..=MAX_POLL).contains(&d) {
        return Err(expected(
            "a duration from 100ms to 1h such as \"1s\"",
            value,
        ));
    }
    Ok(d)
}

fn pool_count(value: &Value) -> Result<usize, String> {
    match count(value) {
        Ok(n) if (MIN_POOL_SIZE..=MAX_POOL_SIZE).contains(&n) => Ok(n),
        _ => Err(expected(
            &format!("a whole number from {MIN_POOL_SIZE} to {MAX_POOL_SIZE}"),
            value,
        )),
    }
}

//! The configuration's unit tests: every key's checks and messages, the environment
//! overrides, the libpq fallback, redaction in `Debug` and `--check-config`, and reload.

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
    let url = "host=db.example dbname=sisy sslmode=verify-full sslrootcert=/etc/sisyphus/ca.pem";
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
    assert!(config.listen && config.prepared_statements);
    assert_eq!(config.poll_interval, Duration::from_secs(1));
    assert_eq!(config.pool_size, 6);
}

#[test]
fn pooled_mode_keys() {
    let text = with_url(
        "listen = false\nprepared_statements = false\npoll_interval = \"250ms\"\npool_size = 3",
    );
    let config = load(&text, &[]).0.unwrap();
    assert!(!config.listen && !config.prepared_statements);
    assert_eq!(config.poll_interval, Duration::from_millis(250));
    assert_eq!(config.pool_size, 3);
    let shown = config.to_redacted_toml();
    assert!(shown.contains("listen = false\n"), "{shown}");
    assert!(shown.contains("poll_interval = \"250ms\"\n"), "{shown}");
    let again = load(&shown, &[]).0.unwrap();
    assert_eq!(again.to_redacted_toml(), shown);

    let vars = [
        ("SISY_LISTEN", "false"),
        ("SISY_PREPARED_STATEMENTS", "true"),
        ("SISY_POLL_INTERVAL", "2s"),
        ("SISY_POOL_SIZE", "10"),
    ];
    let config = load(&with_url(""), &vars).0.unwrap();
    assert!(!config.listen && config.prepared_statements);
    assert_eq!(config.poll_interval, Duration::from_secs(2));
    assert_eq!(config.pool_size, 10);

    let (msg, path) = error(&with_url("listen = \"no\""), &[]);
    assert_eq!(
        msg,
        format!("{path}: listen: expected true or false, got \"no\"")
    );
    let (msg, path) = error(&with_url("poll_interval = \"10ms\""), &[]);
    assert_eq!(
        msg,
        format!(
            "{path}: poll_interval: expected a duration from 100ms to 1h such as \"1s\", got \"10ms\""
        )
    );
    let (msg, _) = error(&with_url(""), &[("SISY_POLL_INTERVAL", "2h")]);
    assert!(
        msg.starts_with("SISY_POLL_INTERVAL: expected a duration from 100ms"),
        "{msg}"
    );
    let (msg, path) = error(&with_url("pool_size = 1"), &[]);
    assert_eq!(
        msg,
        format!("{path}: pool_size: expected a whole number from 2 to 64, got 1")
    );
    let (msg, _) = error(&with_url(""), &[("SISY_POOL_SIZE", "100")]);
    assert_eq!(
        msg,
        "SISY_POOL_SIZE: expected a whole number from 2 to 64, got \"100\""
    );
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
             shutdown_grace, metrics_listen, history_retention, state_dir, log_format, listen, \
             prepared_statements, poll_interval, pool_size)"
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

#[test]
fn a_variable_replaces_a_bad_file_value_unread() {
    let text = with_url("capacity = \"many\"\nlease = 5\npools = []");
    let vars = [
        ("SISY_CAPACITY", "3"),
        ("SISY_LEASE", "1m"),
        ("SISY_POOLS", "a"),
    ];
    let config = load(&text, &vars).0.unwrap();
    assert_eq!((config.capacity, config.pools), (3, vec!["a".to_string()]));
    assert_eq!(config.lease, Duration::from_secs(60));
}

#[test]
fn values_of_the_wrong_kind_are_named_by_kind() {
    let (msg, path) = error(&with_url("lease = 1979-05-27"), &[]);
    assert!(
        msg.starts_with(&format!("{path}: lease: expected a duration")),
        "{msg}"
    );
    assert!(msg.ends_with("got a date"), "{msg}");
    let (msg, path) = error(&with_url("pools = [1979-05-27]"), &[]);
    assert!(
        msg.starts_with(&format!("{path}: pools: expected a list of non-empty")),
        "{msg}"
    );
    let (msg, path) = error(&with_url("state_dir = [\"/a\"]"), &[]);
    assert_eq!(
        msg,
        format!("{path}: state_dir: expected an absolute directory path, got a list")
    );
    let (msg, path) = error(&with_url("log_format = { a = 1 }"), &[]);
    assert_eq!(
        msg,
        format!("{path}: log_format: expected \"human\" or \"json\", got a table")
    );
    let (msg, path) = error(&with_url("capacity = 2.0"), &[]);
    assert_eq!(
        msg,
        format!("{path}: capacity: expected a whole number >= 1, got 2.0")
    );
}

//! TLS and database passwords against a real PostgreSQL: each `sslmode`, the real `sisy`
//! binary and real guardians over TLS, and passwords from a password file that no message
//! ever shows.
//!
//! The certificates are made at test time with rcgen: a throwaway CA, a server certificate
//! for `localhost` it signed, and a second CA that signed nothing (the "wrong CA"). Each
//! test starts a private cluster that also listens on 127.0.0.1, because PostgreSQL offers
//! TLS only over TCP; its pg_hba.conf refuses unencrypted TCP, so a session that works at
//! all over TCP is encrypted. The harness itself keeps using the Unix socket (trust).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio_postgres::Client;

use crate::pg::{Server, TestDb};
use crate::util::{Guardian, sisy, trigger, wait_finished};

/// PEM files and a pg_hba.conf in a directory the server's user can read.
struct Files {
    dir: TempDir,
}

impl Files {
    /// The CA (`ca.pem`), the server's certificate and key (`server.crt`, `server.key`),
    /// and a CA that signed nothing (`other-ca.pem`).
    fn new() -> Files {
        let dir = tempfile::Builder::new()
            .prefix("sisy-tls-")
            .tempdir()
            .unwrap();
        // The server runs as `postgres` when we are root: it must reach the files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let files = Files { dir };
        let (ca_params, ca_key) = ca("sisy test CA");
        files.write(
            "ca.pem",
            &ca_params.self_signed(&ca_key).unwrap().pem(),
            0o644,
        );
        let (other_params, other_key) = ca("some other CA");
        let other = other_params.self_signed(&other_key).unwrap().pem();
        files.write("other-ca.pem", &other, 0o644);

        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let cert = server.signed_by(&server_key, &issuer).unwrap();
        files.write("server.crt", &cert.pem(), 0o644);
        // PostgreSQL refuses a key others can read, or one owned by another user.
        files.write("server.key", &server_key.serialize_pem(), 0o600);
        if nix::unistd::geteuid().is_root() {
            let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            std::os::unix::fs::chown(files.path("server.key"), Some(postgres.uid.as_raw()), None)
                .unwrap();
        }
        files
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn write(&self, name: &str, text: &str, mode: u32) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A private cluster on 127.0.0.1 (and its socket) with `hba` after the harness's own
    /// `local` line, and the server certificate when `ssl`.
    fn start_server(&self, hba: &str, ssl: bool) -> Server {
        self.write(
            "pg_hba.conf",
            &format!("local all all trust\n{hba}\n"),
            0o644,
        );
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_string(),
            format!("hba_file={}", self.path("pg_hba.conf")),
        ];
        if ssl {
            settings.push("ssl=on".into());
            settings.push(format!("ssl_cert_file={}", self.path("server.crt")));
            settings.push(format!("ssl_key_file={}", self.path("server.key")));
        }
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        Server::start_private_with(&settings)
    }
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    (params, KeyPair::generate().unwrap())
}

/// The key=value URL of `db` over TCP as `user`, with `extra` settings. The name is
/// `localhost` (what the certificate says); `hostaddr` spares the IPv6 attempt.
fn tcp_url(server: &Server, db: &TestDb, user: &str, extra: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname={} {extra}",
        server.port, db.name
    )
}

/// A fresh database in `server` with the sisy schema, and a client on the Unix socket.
async fn migrated(server: &Server) -> (TestDb, Client) {
    let db = server.fresh_database();
    let out = run(
        sisy().args(["--database-url", &db.url, "db", "migrate"]),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let client = db.connect().await;
    (db, client)
}

/// Runs `cmd` without the tester's libpq variables and home directory (their password
/// file and root.crt), plus `env`.
fn run(cmd: &mut Command, env: &[(&str, &str)]) -> Output {
    clean(cmd, env).output().unwrap()
}

fn clean<'c>(cmd: &'c mut Command, env: &[(&str, &str)]) -> &'c mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", "/nonexistent").envs(env.iter().copied())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Connects through `db::connect` (the guardian's and CLI's path); the error in full.
async fn connect(url: &str) -> Result<Client, String> {
    sisyphus::db::connect(url)
        .await
        .map_err(|e| format!("{e:#}"))
}

async fn encrypted(client: &Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

const TLS_ONLY: &str = "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_checks_what_it_promises() {
    let files = Files::new();
    let server = files.start_server(TLS_ONLY, true);
    let db = server.fresh_database();
    let (ca, other) = (files.path("ca.pem"), files.path("other-ca.pem"));
    let url = |extra: &str| tcp_url(&server, &db, "postgres", extra);

    // require: encrypted; with no CA known nothing is checked, as in libpq.
    let client = connect(&url("sslmode=require")).await.unwrap();
    assert!(encrypted(&client).await);
    // The server refuses plaintext over TCP, so every success below is encrypted.
    let err = connect(&url("sslmode=disable")).await.err().unwrap();
    assert!(err.contains("no encryption"), "{err}");

    // verify-full: the right CA and the name in the certificate.
    let client = connect(&url(&format!("sslmode=verify-full sslrootcert={ca}")))
        .await
        .unwrap();
    assert!(encrypted(&client).await);
    // The same in URL form, the path percent-encoded.
    let as_url = format!(
        "postgresql://postgres@localhost:{}/{}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        server.port,
        db.name,
        ca.replace('/', "%2F")
    );
    assert!(encrypted(&connect(&as_url).await.unwrap()).await);

    // A wrong CA fails, saying what to check; so does require once a CA is named (libpq).
    for mode in ["verify-full", "verify-ca", "require"] {
        let err = connect(&url(&format!("sslmode={mode} sslrootcert={other}")))
            .await
            .err()
            .unwrap();
        assert!(
            err.contains("the database server's certificate is not trusted")
                && err.contains("check sslrootcert"),
            "{mode}: {err}"
        );
    }

    // A name the certificate does not list fails verify-full only.
    let wrong_name = format!(
        "host=127.0.0.1 port={} user=postgres dbname={} sslrootcert={ca}",
        server.port, db.name
    );
    let err = connect(&format!("{wrong_name} sslmode=verify-full"))
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("certificate is not valid for the host name \"127.0.0.1\""),
        "{err}"
    );
    for mode in ["verify-ca", "require"] {
        let client = connect(&format!("{wrong_name} sslmode={mode}"))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(encrypted(&client).await, "{mode}");
    }

    // Verification without a CA is refused before connecting.
    let err = connect(&url("sslmode=verify-full")).await.err().unwrap();
    assert!(err.contains("set sslrootcert="), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_guardians_work_over_verified_tls() {
    let files = Files::new();
    let server = files.start_server(TLS_ONLY, true);
    let (ca, other) = (files.path("ca.pem"), files.path("other-ca.pem"));
    let (db, admin) = migrated(&server).await;
    let url = |extra: &str| tcp_url(&server, &db, "postgres", extra);

    let verified = url(&format!("sslmode=verify-full sslrootcert={ca}"));
    let out = run(
        sisy().args(["--database-url", &verified, "db", "status"]),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("schema version"),
        "{}",
        text(&out.stdout)
    );
    let wrong = url(&format!("sslmode=verify-full sslrootcert={other}"));
    let out = run(sisy().args(["--database-url", &wrong, "db", "status"]), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("certificate is not trusted") && !stderr.contains("panicked"),
        "{stderr}"
    );

    admin
        .batch_execute("INSERT INTO sisy.jobs (name, command) VALUES ('over-tls', 'echo over tls')")
        .await
        .unwrap();
    // A guardian as the tests start them, with verify-full and the CA in its config file.
    let require = TestDb {
        name: db.name.clone(),
        url: url(&format!("sslmode=verify-full sslrootcert={ca}")),
    };
    let mut plain = Guardian::start(&require, "g-require", "");
    let id = trigger(&admin, "over-tls").await;
    assert_eq!(
        wait_finished(&admin, id, Duration::from_secs(30)).await,
        "succeeded"
    );
    assert_eq!(plain.stop(), Some(0), "{}", plain.log());

    // verify-full through the libpq variables (the unit file's Environment=)...
    let verify_full = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    let checked = EnvGuardian::start(&url(""), "g-ca", &verify_full);
    let id = trigger(&admin, "over-tls").await;
    assert_eq!(
        wait_finished(&admin, id, Duration::from_secs(30)).await,
        "succeeded"
    );
    let host: String = admin
        .query_one("SELECT host FROM sisy.runs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(host, "g-ca", "{}", checked.log());
    // ...and with the wrong CA the guardian refuses the server, says why and exits non-zero:
    // a certificate does not fix itself, so waiting for it as for an outage would hang.
    let wrong_ca = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", other.as_str()),
    ];
    let mut refused = EnvGuardian::start(&url(""), "g-wrong-ca", &wrong_ca);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = refused.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guardian did not exit: {}",
            refused.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = refused.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("error: ") && log.contains("certificate is not trusted"),
        "{log}"
    );
    let registered: i64 = admin
        .query_one(
            "SELECT count(*) FROM sisy.hosts WHERE name = 'g-wrong-ca'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(registered, 0, "{}", refused.log());

    // Every TCP session the guardians opened was encrypted (the server allows nothing else).
    let (sessions, plaintext): (i64, i64) = {
        let row = admin
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE NOT s.ssl)
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.client_addr IS NOT NULL AND a.datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        sessions > 0 && plaintext == 0,
        "{sessions} sessions, {plaintext} in plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_come_from_a_password_file_and_are_never_printed() {
    let files = Files::new();
    let server = files.start_server("host all all 127.0.0.1/32 scram-sha-256", false);
    let (db, admin) = migrated(&server).await;
    // A colon and a backslash, which the password file must escape.
    let password = r"Pa:ss\w0rd-xyzzy";
    admin
        .batch_execute(&format!(
            "CREATE ROLE pw_user LOGIN SUPERUSER PASSWORD '{password}'"
        ))
        .await
        .unwrap();
    let url = format!(
        "host=127.0.0.1 port={} user=pw_user dbname={}",
        server.port, db.name
    );
    let escaped = password.replace('\\', r"\\").replace(':', r"\:");
    let line = format!(
        "# sisyphus test\n127.0.0.1:{}:{}:pw_user:{escaped}\n",
        server.port, db.name
    );
    files.write("pgpass", &line, 0o600);
    let pgpass = files.path("pgpass");
    let status = |url: &str, env: &[(&str, &str)]| {
        let out = run(sisy().args(["--database-url", url, "db", "status"]), env);
        let stderr = text(&out.stderr);
        assert!(
            !stderr.contains("xyzzy"),
            "the password was printed: {stderr}"
        );
        (out.status.code(), stderr)
    };

    assert_eq!(
        status(&url, &[("PGPASSFILE", &pgpass)]),
        (Some(0), String::new())
    );
    let (code, stderr) = status(&url, &[]);
    assert_eq!(code, Some(3));
    assert!(
        stderr.contains("the server asks for a password and none was found"),
        "{stderr}"
    );

    // A wrong password, given in the URL or the environment, is named by its source only.
    let wrong = format!("{url} password=WrongHorse42");
    let (code, stderr) = status(&wrong, &[("PGPASSFILE", &pgpass)]);
    assert_eq!(code, Some(3));
    assert!(
        stderr.contains("password authentication failed for user \"pw_user\"")
            && stderr.contains("check the password in the database URL")
            && !stderr.contains("WrongHorse42"),
        "{stderr}"
    );
    let (_, stderr) = status(&url, &[("PGPASSWORD", "WrongHorse42")]);
    assert!(
        stderr.contains("check PGPASSWORD") && !stderr.contains("WrongHorse42"),
        "{stderr}"
    );
    let err = connect(&wrong).await.err().unwrap();
    assert!(
        err.contains("password authentication failed") && !err.contains("WrongHorse42"),
        "{err}"
    );
    // Nor is a right one, when something else fails.
    let elsewhere = format!(
        "{url} dbname=no_such_db password='{}'",
        password.replace('\\', r"\\")
    );
    let err = connect(&elsewhere).await.err().unwrap();
    assert!(
        err.contains("no_such_db") && !err.contains("xyzzy"),
        "{err}"
    );

    // This server has no TLS: require says so.
    let err = connect(&format!("{url} sslmode=require"))
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("the server does not accept TLS connections"),
        "{err}"
    );

    // A guardian finds its password in the file named by PGPASSFILE.
    admin
        .batch_execute("INSERT INTO sisy.jobs (name, command) VALUES ('with-password', 'true')")
        .await
        .unwrap();
    let guardian = EnvGuardian::start(&url, "g-pw", &[("PGPASSFILE", &pgpass)]);
    let id = trigger(&admin, "with-password").await;
    assert_eq!(
        wait_finished(&admin, id, Duration::from_secs(30)).await,
        "succeeded"
    );
    assert!(!guardian.log().contains("xyzzy"), "{}", guardian.log());

    // libpq's rule: a password file others may read is ignored, and the error says so.
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) = status(&url, &[("PGPASSFILE", &pgpass)]);
    assert_eq!(code, Some(3));
    assert!(stderr.contains("(mode 0644): chmod 0600"), "{stderr}");
}

/// A `sisy guardian` with libpq variables in its environment (which its config file cannot
/// carry) and otherwise a clean one; killed on drop. util's `Guardian` takes no environment.
struct EnvGuardian {
    child: Child,
    dir: TempDir,
}

impl EnvGuardian {
    fn start(url: &str, name: &str, env: &[(&str, &str)]) -> EnvGuardian {
        let dir = tempfile::Builder::new()
            .prefix("sisy-guardian-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("guardian.toml");
        let toml = format!(
            "database_url = {url:?}\nhost_name = {name:?}\nstate_dir = {:?}\n\
             heartbeat_interval = \"1s\"\nlease = \"3s\"\nshutdown_grace = \"5s\"\n",
            dir.path().display().to_string()
        );
        std::fs::write(&config, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("guardian.log")).unwrap();
        let mut cmd = sisy();
        cmd.args(["guardian", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info");
        let child = clean(&mut cmd, env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        EnvGuardian { child, dir }
    }

    fn log(&self) -> String {
        let path: PathBuf = self.dir.path().join("guardian.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for EnvGuardian {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

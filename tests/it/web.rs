//! The dashboard (`sisy web`) as its users meet it: the real binary, connected with
//! `sisy_reader` rights, serving runs a real guardian made, looked at in a real headless
//! Chromium (tests/it/browser.rs). Every page loads with the data the test inserted, every
//! link on it leads to a page that loads, a hostile job name is text, no env value appears,
//! and a screenshot of each page is written under target/screenshots/ for a person to look
//! at. The rest speaks plain HTTP: bad parameters, a database that stops answering.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::browser::Browser;
use crate::pg::TestDb;
use crate::util::{Guardian, Proxy, migrated_db, sisy, trigger, wait_finished, wait_until};

/// A job name that would run in the page if it were not escaped.
const HOSTILE: &str =
    "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";

/// A `sisy web` process on a loopback port of its choosing; killed on drop.
struct WebServer {
    child: Child,
    address: SocketAddr,
}

impl WebServer {
    fn start(url: &str) -> WebServer {
        let mut child = sisy()
            .args(["web", "--listen", "127.0.0.1:0"])
            .env("SISY_DATABASE_URL", url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The first line says where it listens; read in a thread so a silent process fails
        // the test at a deadline instead of hanging it.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sisy web said nothing within 30 s");
        let address = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| {
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("sisy web did not start: {line:?} {err}")
            });
        WebServer { child, address }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer to a plain HTTP GET: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET `path` over HTTP/1.1 (Connection: close), in a blocking thread.
async fn get(address: SocketAddr, path: &str) -> Answer {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_string(),
        }
    })
    .await
    .unwrap()
}

/// A login role of `sisy_reader` for `db`, as a database URL.
async fn reader(db: &TestDb, owner: &tokio_postgres::Client) -> String {
    let roles = sisy()
        .args(["--database-url", &db.url, "db", "roles"])
        .output()
        .unwrap();
    assert!(roles.status.success(), "{roles:?}");
    crate::security::login_as(db, owner, "sisy_reader").await.0
}

/// The dashboard end to end in Chromium, as `sisy_reader`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_fleet_in_a_browser_as_a_reader() {
    let (db, client) = migrated_db().await;
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, env, schedule, timezone) VALUES
               ('backup', 'printf ''\\033[32mall good\\033[0m\\n\\tcolumn\\n''',
                '{\"PGPASSWORD\": \"hunter2\"}', '0 3 * * *', 'Europe/Berlin'),
               ($1, 'echo failing >&2; exit 3', '{}', NULL, 'UTC'),
               ('extract', 'echo extracted', '{}', NULL, 'UTC'),
               ('load', 'echo loaded', '{}', NULL, 'UTC')",
            &[&HOSTILE],
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO sisy.dependencies (job, upstream) VALUES ('load', 'extract');
             INSERT INTO sisy.hosts (name, lease_until, last_seen, capacity)
             VALUES ('gone-host', now() - interval '1 hour', now() - interval '1 hour', 4);
             INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at,
                                    deadline, state, finished_at, missed_count, error)
             SELECT id, name, 'default', now() - interval '2 hours', 'schedule',
                    now() - interval '2 hours', now() - interval '1 hour', 'expired', now(), 7,
                    'no guardian claimed it before its ttl'
               FROM sisy.jobs WHERE name = 'backup'",
        )
        .await
        .unwrap();
    let guardian = Guardian::start(&db, "g1", "");
    let backup = trigger(&client, "backup").await;
    let hostile = trigger(&client, HOSTILE).await;
    let extract = trigger(&client, "extract").await;
    assert_eq!(
        wait_finished(&client, backup, Duration::from_secs(60)).await,
        "succeeded"
    );
    assert_eq!(
        wait_finished(&client, hostile, Duration::from_secs(60)).await,
        "failed"
    );
    assert_eq!(
        wait_finished(&client, extract, Duration::from_secs(60)).await,
        "succeeded"
    );
    let flow: i64 = wait_until(
        &client,
        "the flow run finished",
        Duration::from_secs(60),
        || "SELECT coalesce(max(id), 0) FROM sisy.flow_runs WHERE state = 'succeeded'".to_string(),
        |id: i64| id > 0,
    )
    .await;

    let url = reader(&db, &client).await;
    let web = WebServer::start(&url);
    let browser = Browser::start().await;
    let mut links = BTreeSet::new();
    let mut visit = async |path: &str, shot: &str| -> String {
        browser.goto(&web.url(path)).await;
        let text = browser.body_text().await;
        assert_ne!(
            browser.title().await,
            "pwned",
            "a row ran as script on {path}"
        );
        assert!(!text.contains("hunter2") && !browser.html().await.contains("hunter2"));
        browser.screenshot(shot).await;
        for (_, href) in browser.links().await {
            links.insert(href);
        }
        text
    };

    let fleet = visit("/", "web-fleet").await;
    assert!(fleet.contains("g1") && fleet.contains("alive"), "{fleet}");
    assert!(
        fleet.contains("gone-host") && fleet.contains("dead"),
        "{fleet}"
    );

    let jobs = visit("/jobs", "web-jobs").await;
    assert!(
        jobs.contains(HOSTILE),
        "the hostile name is not shown as text: {jobs}"
    );
    assert!(jobs.contains("At 03:00") && jobs.contains("CET"), "{jobs}");
    // Links work: from the list to the job, from the job to its run, from there to the output.
    browser.click_link("backup").await;
    let job = browser.body_text().await;
    assert!(
        job.contains("Job backup") && job.contains("PGPASSWORD"),
        "{job}"
    );
    assert!(job.contains("names only"), "{job}");
    browser.screenshot("web-job").await;
    browser.click_link(&backup.to_string()).await;
    let run = browser.body_text().await;
    assert!(
        run.contains(&format!("Run {backup}")) && run.contains("all good"),
        "{run}"
    );
    let html = browser.html().await;
    assert!(!html.contains("[32m") && !html.contains('\u{1b}'), "{html}");
    assert!(html.contains("all good\n\tcolumn"), "{html}");
    browser.screenshot("web-run").await;

    let failed = visit("/runs?state=failed", "web-runs").await;
    assert!(
        failed.contains(HOSTILE) && !failed.contains("extract"),
        "{failed}"
    );
    let everything = visit("/runs", "web-runs-all").await;
    for id in [backup, hostile, extract] {
        assert!(everything.contains(&id.to_string()), "{everything}");
    }

    let flows = visit("/flows", "web-flows").await;
    assert!(
        flows.contains("extract") && flows.contains("succeeded"),
        "{flows}"
    );
    browser.click_link(&flow.to_string()).await;
    let page = browser.body_text().await;
    assert!(page.contains("load") && page.contains("extract"), "{page}");
    browser.screenshot("web-flow").await;
    // The drawing is the one `sisy flows plot` makes, members coloured by state.
    let svg = get(web.address, &format!("/flow.svg?id={flow}")).await;
    assert_eq!(svg.status, 200);
    assert_eq!(
        svg.header("content-type"),
        Some("image/svg+xml; charset=utf-8")
    );
    let plotted = sisy()
        .args([
            "--database-url",
            &url,
            "flows",
            "plot",
            &flow.to_string(),
            "--format",
            "svg",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&plotted.stdout).trim(),
        svg.body.trim()
    );
    roxmltree::Document::parse(&svg.body).expect("the drawing is well-formed XML");
    assert!(svg.body.contains("#b7e4a7"), "no member drawn as succeeded");

    let missed = visit("/missed", "web-missed").await;
    assert!(
        missed.contains("backup") && missed.contains("gone-host"),
        "{missed}"
    );
    assert!(missed.contains("no guardian claimed it"), "{missed}");

    // Every link of every page visited leads to a page that loads.
    let own: Vec<String> = links
        .into_iter()
        .filter_map(|l| l.strip_prefix(&web.url("")).map(str::to_string))
        .collect();
    assert!(own.len() > 15, "{own:?}");
    for path in &own {
        let answer = get(web.address, path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    drop(guardian);
}

/// What a careless or hostile visitor, and a database that stops answering, get: a page
/// that says what is wrong, never a hang or an exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_a_silent_database_get_a_clear_page() {
    let (db, _client) = migrated_db().await;
    let proxy = Proxy::start(crate::pg::server());
    let mut web = WebServer::start(&proxy.db(&db).url);
    let ok = get(web.address, "/").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let timing = ok.header("server-timing").unwrap_or_default();
    assert!(timing.starts_with("app;dur="), "{timing}");
    let policy = ok.header("content-security-policy").unwrap_or_default();
    assert!(policy.contains("default-src 'none'"), "{policy}");

    for (path, status, says) in [
        ("/runs?before=abc", 400, "is not a run or flow run id"),
        ("/runs?state=bogus", 400, "is not a run state"),
        ("/runs?since=yesterday", 400, "is not a time"),
        ("/run", 400, "which run?"),
        ("/run?id=987654321", 404, "there is no run 987654321"),
        (
            "/job?name=%3Cnobody%3E",
            404,
            "there is no job named &quot;&lt;nobody&gt;&quot;",
        ),
        ("/flow?id=-1", 404, "there is no flow run -1"),
        ("/flow.svg?id=5", 404, "there is no flow run 5"),
        ("/no/such/page", 404, "there is no such page"),
        (
            "/runs?before=99999999999999999999",
            400,
            "is not a run or flow run id",
        ),
    ] {
        let answer = get(web.address, path).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert!(answer.body.contains(says), "{path}: {}", answer.body);
    }

    // The database takes connections but never answers: the page says so in bounded time.
    proxy.blackhole();
    let asked = Instant::now();
    let silent = get(web.address, "/jobs").await;
    assert_eq!(silent.status, 503, "{}", silent.body);
    assert!(silent.body.contains("did not answer"), "{}", silent.body);
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "{:?}",
        asked.elapsed()
    );
    assert!(web.running(), "the dashboard ended with the database");
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let again = get(web.address, "/jobs").await;
        if again.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no page after the database came back: {}",
            again.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The dashboard binds to loopback unless told otherwise, and an address it cannot bind is
/// an error that names it.
#[test]
fn it_listens_on_loopback_unless_told_otherwise() {
    let help = sisy().args(["web", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[default: 127.0.0.1:8080]"), "{help}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let db = crate::pg::fresh_database();
    let out = sisy()
        .args(["--database-url", &db.url, "db", "migrate"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = sisy()
        .args(["--database-url", &db.url, "web", "--listen", &address])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {address}")),
        "{err}"
    );
}

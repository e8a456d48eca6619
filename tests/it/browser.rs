//! A real headless Chromium for tests of web pages, driven through WebDriver: [`Browser`]
//! starts a `chromedriver` of its own on a loopback port the kernel picks, opens one
//! Chromium session with a private profile, and on drop ends the session and kills and reaps
//! every process it started, also when the test panics. The tests at the bottom prove the
//! harness on a tiny page server of their own; tests of `sisy web` live elsewhere.
//!
//! Cleanup, in two layers, because a test process can end in two ways:
//!
//! ```text
//!   Browser dropped (test ends or panics) -> DELETE the session, SIGKILL chromedriver's
//!                                           process group, wait until nothing is left
//!   test process killed (SIGKILL, abort)  -> PR_SET_PDEATHSIG kills chromedriver, and
//!                                           Chromium, tied to it by --remote-debugging-pipe,
//!                                           exits when that pipe closes; the next test
//!                                           process removes the directory it left
//! ```
//!
//! Chromium needs `--no-sandbox` as root and is kept on loopback: every non-loopback request
//! goes to a proxy address where nothing listens, so it fails at once instead of leaving the
//! machine. Its crash handler (chrome_crashpad_handler) detaches into a session of its own
//! and writes under `$HOME`, so HOME points into the browser's private directory too.

// Each test module uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::pg;

/// Debian's chromium package puts the real browser here (`/usr/bin/chromium` is a shell
/// wrapper that reads /etc/chromium.d); chromedriver would pick the same one by itself.
const CHROMIUM: [&str; 2] = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"];
const INSTALL: &str = "install the Debian packages chromium and chromium-driver";
/// Browser directories are `$TMPDIR/sisy-browser-<pid of the test process>-<random>`.
const DIR_PREFIX: &str = "sisy-browser-";
/// How long starting chromedriver and the session, a page load, or a navigation may take.
const SLOW: Duration = Duration::from_secs(30);

/// One headless Chromium session, with a chromedriver of its own.
pub struct Browser {
    client: Client,
    session: String,
    /// chromedriver, leader of its own process group (Chromium and its helpers join it).
    driver: Child,
    port: u16,
    /// HOME of the browser: its profile, its crash reports and chromedriver's log.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (window 1280x900, language
    /// en-US). Panics when chromium or chromedriver is missing, or when either fails to start.
    pub async fn start() -> Browser {
        let chromedriver = find_on_path("chromedriver")
            .unwrap_or_else(|| panic!("chromedriver is not on PATH: {INSTALL}"));
        let chromium = CHROMIUM
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("chromium is not installed: {INSTALL}"));
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(remove_dirs_of_dead_processes);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let home = dir.path();
        let log = home.join("chromedriver.log");

        let mut cmd = Command::new(chromedriver);
        // Port 0: the kernel picks a free port and chromedriver prints it, so parallel
        // browsers cannot race for one. chromedriver listens on loopback only by default.
        cmd.arg("--port=0")
            .arg(format!("--log-path={}", log.display()))
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own group, so that drop can kill Chromium and its helpers in one go.
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: runs between fork and exec; only async-signal-safe syscalls, no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // If we died before prctl, the signal will never come: refuse to start.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        // PDEATHSIG fires when the forking *thread* exits: fork from one that never does.
        let mut driver = pg::spawn_from_long_lived_thread(cmd)
            .unwrap_or_else(|e| panic!("start chromedriver: {e} ({INSTALL})"));
        let stdout = driver.stdout.take().unwrap();
        // From here on, a panic drops `parts`, which cleans up like a Browser would.
        let mut parts = Parts {
            driver: Some(driver),
            dir: Some(dir),
        };

        let port = match tokio::time::timeout(SLOW, listening_port(stdout)).await {
            Ok(Some(port)) => port,
            Ok(None) => panic!("chromedriver exited before listening{}", parts.log_tail()),
            Err(_) => panic!(
                "chromedriver did not listen within {SLOW:?}{}",
                parts.log_tail()
            ),
        };
        wait_ready(port, &parts).await;

        let profile = parts.home().join("profile");
        let caps = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": { "pageLoad": SLOW.as_millis() as u64, "script": SLOW.as_millis() as u64 },
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // We run as root, where Chromium's sandbox refuses to start.
                    "--no-sandbox",
                    "--disable-gpu",
                    // /dev/shm is 64 MB in containers: use /tmp for shared memory.
                    "--disable-dev-shm-usage",
                    // Talk to chromedriver over a pipe instead of a debugging port, so that
                    // Chromium exits when chromedriver dies (over a port, it outlives it).
                    "--remote-debugging-pipe",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,900",
                    "--lang=en-US",
                    // Keep every request on loopback: loopback addresses and localhost
                    // bypass proxies, all else goes to a port where nothing listens.
                    "--proxy-server=http://127.0.0.1:9",
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("start a Chromium session: {e}{}", parts.log_tail()));
        let session = client
            .session_id()
            .await
            .unwrap()
            .expect("a new session has an id");
        let (driver, dir) = parts.take();
        Browser {
            client,
            session,
            driver,
            port,
            dir,
        }
    }

    /// The WebDriver client, for what the helpers below do not cover (forms, keys, windows).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The browser's private directory: its HOME, with the profile in `profile/`. Chromium's
    /// crash handlers, which leave chromedriver's process group, name it on their command
    /// lines.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// chromedriver's process id, which is also the process group of Chromium's processes.
    pub fn driver_pid(&self) -> u32 {
        self.driver.id()
    }

    /// Loads `url` and waits until the page has loaded (its `load` event).
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    /// The address of the page shown.
    pub async fn current_url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    /// The page's `<title>`.
    pub async fn title(&self) -> String {
        self.client.title().await.unwrap()
    }

    /// The visible text of `<body>`, as a person reads it: markup gone, entities decoded,
    /// hidden elements left out.
    pub async fn body_text(&self) -> String {
        let body = self.client.find(Locator::Css("body")).await.unwrap();
        body.text().await.unwrap()
    }

    /// The page's HTML as the browser now holds it (the DOM serialized, not the bytes served).
    pub async fn html(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// Every `<a href>` of the page in document order, as (visible text, absolute URL).
    pub async fn links(&self) -> Vec<(String, String)> {
        let mut links = Vec::new();
        for a in self.client.find_all(Locator::Css("a[href]")).await.unwrap() {
            let text = a.text().await.unwrap();
            // The `href` property, unlike the attribute, is resolved against the page's URL.
            let href = a.prop("href").await.unwrap().unwrap_or_default();
            links.push((text, href));
        }
        links
    }

    /// Clicks the first link whose visible text is exactly `text` and waits until the page
    /// it leads to has loaded. Panics, listing the page's links, when there is no such link.
    pub async fn click_link(&self, text: &str) {
        let Ok(link) = self.client.find(Locator::LinkText(text)).await else {
            let links = self.links().await;
            panic!(
                "no link {text:?} on {}; links: {links:?}",
                self.current_url().await
            );
        };
        // Mark the document being left: the new one is loaded when the mark is gone and
        // the new document is complete. (chromedriver usually waits for the navigation
        // itself, but the WebDriver spec does not promise it for a click.)
        self.eval("window.__sisyLeaving = true").await;
        link.click()
            .await
            .unwrap_or_else(|e| panic!("click link {text:?}: {e}"));
        let deadline = Instant::now() + SLOW;
        loop {
            // While the old document unloads, scripts may fail: that means "not yet".
            let loaded = self
                .client
                .execute(
                    "return !window.__sisyLeaving && document.readyState === 'complete'",
                    vec![],
                )
                .await;
            if let Ok(Value::Bool(true)) = loaded {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "clicking link {text:?} loaded no new page within {SLOW:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The visible text of every element matching the CSS selector `css`, in document order.
    pub async fn find_text(&self, css: &str) -> Vec<String> {
        let elements = self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css:?}: {e}"));
        let mut texts = Vec::with_capacity(elements.len());
        for element in elements {
            texts.push(element.text().await.unwrap());
        }
        texts
    }

    /// Runs `js` as the body of a function in the page and returns what it returns
    /// (`return document.title`), as JSON.
    pub async fn eval(&self, js: &str) -> Value {
        self.client
            .execute(js, vec![])
            .await
            .unwrap_or_else(|e| panic!("run script {js:?}: {e}"))
    }

    /// Saves what the window shows as `target/screenshots/<name>.png` (under the package's
    /// directory, so a person can look at it after the run) and returns the file's path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        assert!(
            !name.is_empty() && !name.contains('/'),
            "screenshot name {name:?}: a file name, not a path"
        );
        let png = self.client.screenshot().await.unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session lets chromedriver close Chromium in order. A plain blocking
        // request: drop may run outside the runtime, or in one that is shutting down.
        let _ = http(self.port, "DELETE", &format!("/session/{}", self.session));
        stop(&mut self.driver, self.dir.path());
    }
}

/// chromedriver and the browser's directory while [`Browser::start`] runs: dropped there
/// (a panic), it cleans up like a [`Browser`] would.
struct Parts {
    driver: Option<Child>,
    dir: Option<tempfile::TempDir>,
}

impl Parts {
    fn home(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// The end of chromedriver's log, for a panic message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.home().join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("; chromedriver's log ends:\n{tail}")
    }

    fn take(&mut self) -> (Child, tempfile::TempDir) {
        (self.driver.take().unwrap(), self.dir.take().unwrap())
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        if let (Some(driver), Some(dir)) = (&mut self.driver, &self.dir) {
            stop(driver, dir.path());
        }
    }
}

/// Kills chromedriver's process group and every process naming `dir` on its command line
/// (Chromium's crash handlers leave the group), reaps chromedriver and waits, a bounded
/// time, until none of them is left. Never panics: it runs in drop, also while unwinding.
fn stop(driver: &mut Child, dir: &Path) {
    let group = driver.id() as libc::pid_t;
    // SAFETY: a plain syscall. The group exists while its unreaped leader does, so its id
    // cannot have been reused yet.
    unsafe { libc::killpg(group, libc::SIGKILL) };
    let _ = driver.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = browser_processes(group, dir);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("browser: processes left after 10 s: {left:?}");
            return;
        }
        for &pid in &left {
            // SAFETY: a plain syscall; at worst the process has exited meanwhile.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The live processes of a browser: those in process group `group` and those naming `dir`
/// on their command line. Zombies do not count: dead, they only wait for init to reap them
/// (Chromium's are not our children), which here takes up to a second and a half.
pub fn browser_processes(group: libc::pid_t, dir: &Path) -> Vec<libc::pid_t> {
    let dir = dir.as_os_str().as_bytes();
    let me = std::process::id() as libc::pid_t;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pids = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok());
    pids.filter(|&pid| pid != me)
        .filter(|pid| {
            // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, fields)) = stat.rsplit_once(") ") else {
                return false;
            };
            let fields: Vec<&str> = fields.split(' ').collect();
            if fields.len() < 3 || matches!(fields[0], "Z" | "X") {
                return false;
            }
            fields[2] == group.to_string()
                || std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| cmdline.windows(dir.len()).any(|w| w == dir))
        })
        .collect()
}

/// Removes the browser directories that test processes killed before their drop could
/// left behind (their browsers died with them, see the top of this file).
fn remove_dirs_of_dead_processes() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Reads chromedriver's stdout until it says which port it listens on; `None` when it
/// exits first. A thread of its own keeps draining stdout afterwards, so that chromedriver
/// never blocks on (or dies of) a full or closed pipe.
async fn listening_port(stdout: std::process::ChildStdout) -> Option<u16> {
    const STARTED: &str = "ChromeDriver was started successfully on port ";
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = line.strip_prefix(STARTED)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(port.trim_end_matches('.').parse::<u16>().ok());
            }
        }
    });
    rx.await.ok().flatten()
}

/// Polls chromedriver's `/status` until it reports itself ready.
async fn wait_ready(port: u16, parts: &Parts) {
    let deadline = Instant::now() + SLOW;
    loop {
        let status = tokio::task::spawn_blocking(move || http(port, "GET", "/status"))
            .await
            .unwrap();
        if let Ok(body) = &status
            && body.contains("\"ready\":true")
        {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "chromedriver on port {port} not ready within {SLOW:?}: {status:?}{}",
                parts.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A minimal blocking HTTP/1.1 request to chromedriver on loopback; returns the body.
/// The response is read by its Content-Length: chromedriver answers `Connection: close`
/// but leaves the connection open.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().map_err(std::io::Error::other)?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    String::from_utf8(body).map_err(std::io::Error::other)
}

/// The first executable file called `name` in a directory of `$PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

// The harness's own tests, on a tiny page server of their own.

/// A tiny web server on 127.0.0.1 answering GETs of fixed pages (path -> HTML), each
/// connection on a thread of its own (Chromium opens spare connections it may never
/// use). The threads live as long as the test process; they block in accept or read.
fn serve(pages: &[(&str, &str)]) -> String {
    let pages: Arc<HashMap<String, String>> = Arc::new(
        pages
            .iter()
            .map(|(p, html)| (p.to_string(), html.to_string()))
            .collect(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let pages = pages.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).unwrap_or(0) == 0 {
                    return;
                }
                // Skip the headers; a GET has no body.
                let mut header = String::new();
                while reader.read_line(&mut header).unwrap_or(0) > 2 {
                    header.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match pages.get(path) {
                    Some(html) => ("200 OK", html.as_str()),
                    None => ("404 Not Found", "not found"),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    base
}

const FIRST: &str = "<!doctype html><html><head><title>Jobs</title></head><body>\
    <h1>Jobs</h1>\
    <ul><li class=job>backup</li><li class=job>rotate logs</li></ul>\
    <p>a job named &lt;script&gt;alert(1)&lt;/script&gt;</p>\
    <a href=\"/second\">Second page</a>\
    </body></html>";
const SECOND: &str = "<!doctype html><html><head><title>Second</title></head><body>\
    <p>You reached the second page.</p></body></html>";

/// The harness end to end: a page served on loopback loads, its text, links and
/// elements are read as a person sees them (an escaped `<script>` is shown as text, not
/// run), a link is followed to the second page, and a screenshot is a real PNG.
#[tokio::test]
async fn a_page_is_read_followed_and_photographed_in_a_real_browser() {
    let base = serve(&[("/", FIRST), ("/second", SECOND)]);
    let browser = Browser::start().await;

    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.title().await, "Jobs");
    assert_eq!(browser.current_url().await, format!("{base}/"));
    let text = browser.body_text().await;
    assert!(
        text.contains("a job named <script>alert(1)</script>"),
        "{text}"
    );
    assert!(browser.html().await.contains("&lt;script&gt;"));
    assert_eq!(browser.find_text("li.job").await, ["backup", "rotate logs"]);
    assert_eq!(
        browser.links().await,
        [("Second page".to_string(), format!("{base}/second"))]
    );
    assert_eq!(browser.eval("return innerWidth").await, json!(1280));

    let path = browser.screenshot("browser-harness").await;
    let png = std::fs::read(&path).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{path:?} is no PNG");
    // The IHDR chunk follows the signature: its width is bytes 16..20, big-endian.
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1280);
    assert!(png.len() > 2000, "{path:?} is only {} bytes", png.len());

    browser.click_link("Second page").await;
    assert_eq!(browser.current_url().await, format!("{base}/second"));
    assert_eq!(browser.title().await, "Second");
    assert_eq!(browser.body_text().await, "You reached the second page.");
}

/// Two browsers in one process run side by side: each has its own chromedriver, port
/// and profile, and each sees its own page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_run_side_by_side() {
    let base = serve(&[("/", FIRST), ("/second", SECOND)]);
    let (a, b) = tokio::join!(Browser::start(), Browser::start());
    assert_ne!(a.port, b.port);
    assert_ne!(a.dir(), b.dir());
    let (first, second) = (format!("{base}/"), format!("{base}/second"));
    tokio::join!(a.goto(&first), b.goto(&second));
    assert_eq!(
        (a.title().await, b.title().await),
        ("Jobs".into(), "Second".into())
    );
}

/// A test that panics with a browser open leaves no process behind: not chromedriver,
/// not Chromium, not its crash handlers (which detach into sessions of their own).
#[tokio::test]
async fn a_panicking_test_leaves_no_browser_process_behind() {
    let seen: Arc<Mutex<Option<(libc::pid_t, PathBuf)>>> = Arc::default();
    let slot = seen.clone();
    let test = tokio::spawn(async move {
        let browser = Browser::start().await;
        browser.goto("about:blank").await;
        let (group, dir) = (
            browser.driver_pid() as libc::pid_t,
            browser.dir().to_path_buf(),
        );
        let running = browser_processes(group, &dir);
        assert!(
            running.len() > 2,
            "chromedriver and Chromium run: {running:?}"
        );
        *slot.lock().unwrap() = Some((group, dir));
        panic!("a test failing with its browser open");
    });
    assert!(test.await.unwrap_err().is_panic());

    let (group, dir) = seen.lock().unwrap().clone().unwrap();
    assert_eq!(browser_processes(group, &dir), Vec::<libc::pid_t>::new());
    assert!(!dir.exists(), "the browser's directory {dir:?} is left");
}

//! The Prometheus endpoint, scraped over HTTP while jobs run: the counters move and the
//! histograms carry the explicit buckets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::util::{Guardian, migrated_db};

fn scrape(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of the first sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A guardian serving metrics on a free loopback port, and that address.
fn guardian_with_metrics(db: &crate::pg::TestDb) -> (Guardian, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let g = Guardian::start(db, "g1", &format!("metrics_listen = {addr:?}"));
    (g, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_runs_while_jobs_run() {
    let (db, client) = migrated_db().await;
    let (g, addr) = guardian_with_metrics(&db);
    client
        .execute("INSERT INTO sisy.jobs (name, command, schedule) VALUES ('tick', 'true', '* * * * * *')", &[])
        .await
        .unwrap();
    let finished = "sisy_runs_finished_total{job=\"tick\",state=\"succeeded\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    let (first, text) = loop {
        if let Some(text) = scrape(&addr)
            && let Some(n) = sample(&text, finished)
            && n >= 1.0
        {
            break (n, text);
        }
        assert!(
            Instant::now() < deadline,
            "no finished runs counted; guardian log:\n{}",
            g.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(sample(&text, "sisy_runs_started_total{job=\"tick\"}").unwrap() >= 1.0);
    assert!(
        text.contains("sisy_dispatch_latency_seconds_bucket{le=\"0.005\"}"),
        "{text}"
    );
    assert!(
        text.contains("sisy_run_duration_seconds_bucket{le=\"0.01\"}"),
        "{text}"
    );
    // The counter moves with the next runs, and the gauges arrive with the heartbeat.
    loop {
        let text = scrape(&addr).unwrap_or_default();
        if sample(&text, finished).unwrap_or(0.0) >= first + 2.0
            && sample(&text, "sisy_capacity").is_some()
        {
            assert_eq!(sample(&text, "sisy_capacity"), Some(16.0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the counter did not move: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The histogram's series do not multiply with the jobs: 100,000 jobs would otherwise be
/// ~1.7 million series. Per-job counters stay (under a cap, see the unit tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_jobs_do_not_make_a_histogram_series_each() {
    let (db, client) = migrated_db().await;
    let (g, addr) = guardian_with_metrics(&db);
    const JOBS: usize = 12;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let name = format!("job-{i}");
        client
            .execute(
                "INSERT INTO sisy.jobs (name, command) VALUES ($1, 'true')",
                &[&name],
            )
            .await
            .unwrap();
        ids.push(crate::util::trigger(&client, &name).await);
    }
    for id in ids {
        crate::util::wait_finished(&client, id, Duration::from_secs(60)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape(&addr).unwrap_or_default();
        let counted = text
            .lines()
            .filter(|l| l.starts_with("sisy_runs_finished_total{"))
            .count();
        if counted >= JOBS && sample(&text, "sisy_run_duration_seconds_count") == Some(JOBS as f64)
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "not every job counted: {text}\nguardian log:\n{}",
            g.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let of = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(of("sisy_run_duration_seconds_count"), 1, "{text}");
    assert_eq!(of("sisy_run_duration_seconds_bucket"), 16, "{text}");
    assert_eq!(
        sample(&text, "sisy_run_duration_seconds_count"),
        Some(JOBS as f64)
    );
    assert_eq!(of("sisy_runs_started_total{job="), JOBS, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_run_start_and_finish_and_no_secrets() {
    let (db, client) = migrated_db().await;
    let mut g = Guardian::start(&db, "g1", "log_format = \"json\"");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, env) VALUES ('quiet', 'echo \"$TOKEN\" > /dev/null', '{\"TOKEN\": \"s3cr3t-token\"}')",
            &[],
        )
        .await
        .unwrap();
    let id = crate::util::trigger(&client, "quiet").await;
    assert_eq!(
        crate::util::wait_finished(&client, id, Duration::from_secs(30)).await,
        "succeeded"
    );
    assert_eq!(g.stop(), Some(0));
    let log = g.log();
    assert!(
        !log.contains("s3cr3t-token"),
        "a job env value was logged:\n{log}"
    );
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    };
    let (started, finished) = (of("run started"), of("run finished"));
    assert_eq!((started.len(), finished.len()), (1, 1), "{log}");
    let f = &finished[0]["fields"];
    assert_eq!(f["job"], "quiet");
    assert_eq!(f["run_id"], id);
    assert_eq!(f["attempt"], 1);
    assert_eq!(f["host"], "g1");
    assert_eq!(f["state"], "succeeded");
    assert!(f["duration_ms"].is_u64(), "{f}");
}

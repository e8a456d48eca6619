//! The sisyphus benchmark: a program that prints numbers (STYLE.md item 11).
//!
//! `cargo bench --bench sisy` runs every scenario; `cargo bench --bench sisy -- latency idle`
//! runs the ones named (latency, throughput, scale, idle, control, flows, fanout, failover,
//! fleet, history, web; fleet, some 25 minutes, history, some 7 minutes and 10 million
//! runs, and web, the dashboard `sisy web` over a million runs, only when named). It starts
//! its own throwaway PostgreSQL (the integration tests' `pg.rs`, with production-like
//! settings and TCP on 127.0.0.1), real release-built `sisy guardian` processes (the tests' `util.rs`)
//! and real jobs, and prints one JSON document on stdout: the conditions (cores, PostgreSQL
//! version and settings, guardian and job counts) and, per scenario, the figures next to
//! their targets. Progress goes to stderr. BENCHMARKS.md records the results.
//!
//! It does not assert anything: a missed target is a figure, not a failure. `cargo test`
//! neither builds nor runs it (`test = false`); `cargo test --all-targets` builds it and runs
//! it without cargo bench's `--bench` flag, which makes it exit at once.

#[path = "../../tests/it/pg.rs"]
mod pg;
// The tests' guardian helpers; the benchmark uses only some of them.
#[allow(dead_code)]
#[path = "../../tests/it/util.rs"]
mod util;

mod bouncer;
mod control;
mod failover;
mod fanout;
mod fleet;
mod flows;
mod harness;
mod history;
mod idle;
mod latency;
mod scale;
mod throughput;
mod web;

use std::time::Instant;

use serde_json::{Value, json};

const SCENARIOS: &[&str] = &[
    "latency",
    "throughput",
    "scale",
    "idle",
    "control",
    "flows",
    "fanout",
    "fleet",
    "failover",
    "history",
    "web",
];

/// Run only when named: fleet takes some 25 minutes, history some 7 and 10 million rows, web
/// a million runs and a `sisy web` server.
const ON_REQUEST: &[&str] = &["fleet", "history", "web"];

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("the sisy benchmark runs only under `cargo bench --bench sisy`; nothing to do");
        return;
    }
    let mut chosen: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    if let Some(bad) = chosen.iter().find(|a| !SCENARIOS.contains(a)) {
        eprintln!(
            "error: unknown scenario '{bad}': choose among {}",
            SCENARIOS.join(", ")
        );
        std::process::exit(2);
    }
    if chosen.is_empty() {
        chosen = SCENARIOS
            .iter()
            .copied()
            .filter(|s| !ON_REQUEST.contains(s))
            .collect();
    }
    match run(&chosen).await {
        Ok(report) => println!("{}", serde_json::to_string_pretty(&report).unwrap()),
        Err(e) => {
            eprintln!("error: the benchmark failed: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(chosen: &[&str]) -> anyhow::Result<Value> {
    let began = Instant::now();
    let cluster = harness::Cluster::start().await?;
    let mut report = json!({
        "benchmark": "sisy",
        "command": format!("cargo bench --bench sisy -- {}", chosen.join(" ")),
        "date": chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        "conditions": cluster.conditions().await?,
    });
    for name in chosen {
        harness::progress(&format!("scenario {name}"));
        let load_before = harness::load();
        let mut figures = match *name {
            "latency" => latency::run(&cluster).await?,
            "throughput" => throughput::run(&cluster).await?,
            "scale" => scale::run(&cluster).await?,
            "idle" => idle::run(&cluster).await?,
            "control" => control::run(&cluster).await?,
            "flows" => flows::run(&cluster).await?,
            "fanout" => fanout::run(&cluster).await?,
            "fleet" => fleet::run(&cluster).await?,
            "failover" => failover::run(&cluster).await?,
            "history" => history::run(&cluster).await?,
            "web" => web::run(&cluster).await?,
            _ => unreachable!("checked in main"),
        };
        // Other work on this machine (builds, tests) takes CPU from the benchmark.
        figures["load_average_1min"] = json!({"before": load_before, "after": harness::load()});
        report[*name] = figures;
    }
    report["elapsed_s"] = json!(harness::round(began.elapsed().as_secs_f64(), 1));
    Ok(report)
}

//! sisyphus: a cron replacement for fleets of hosts, coordinated through one PostgreSQL.
//!
//! The library holds all logic; `src/main.rs` only parses arguments and calls in here.
//! See ARCHITECTURE.md for the map of modules.

pub mod cli;
pub mod config;
pub mod crontab;
pub mod db;
pub mod guardian;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod outage;
pub mod run;
pub mod schedule;
pub mod service;

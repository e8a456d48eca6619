//! sisyphus: a cron replacement for fleets of hosts, coordinated through one PostgreSQL.
//!
//! The library holds all logic; `src/main.rs` only parses arguments and calls in here.
//! See ARCHITECTURE.md for the map of modules.

pub mod claimer;
pub mod cli;
pub mod config;
pub mod crontab;
pub mod db;
pub mod dispatcher;
pub mod guardian;
pub mod heartbeat;
pub mod launch;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod orphans;
pub mod outage;
pub mod reaper;
pub mod recorder;
pub mod schedule;
pub mod scheduler;
pub mod shim;
pub mod spool;
pub mod supervisor;
pub mod users;

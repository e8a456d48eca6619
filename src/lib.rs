//! sisyphus: a cron replacement for fleets of hosts, coordinated through one PostgreSQL.
//!
//! The library holds all logic; `src/main.rs` only parses arguments and calls in here.
//! See ARCHITECTURE.md for the map of modules and the layering the `layering` test checks.
//! Only what another target needs is `pub`: the binary (`cli`, `guardian::request_reload`,
//! `run::shim`, `logging`), the integration tests and benchmarks (`db`, `migrate`,
//! `outage`, `service::claimer`, `service::reaper`); the rest is `pub(crate)`, so that the
//! compiler reports what nothing uses.

pub mod cli;
pub(crate) mod config;
// `pub` like `schedule`: a fuzz target drives the crontab reader.
pub mod crontab;
pub mod db;
pub mod guardian;
pub mod logging;
pub(crate) mod metrics;
pub mod migrate;
pub mod outage;
pub(crate) mod plot;
pub mod run;
// `pub`: the fuzz targets (fuzz/) drive the parser and `next_after` directly.
pub mod schedule;
pub mod service;
pub(crate) mod web;

#[cfg(test)]
mod layering;

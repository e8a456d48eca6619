//! sisyphus: a cron replacement for fleets of hosts, coordinated through one PostgreSQL.
//!
//! The library holds all logic; `src/main.rs` only parses arguments and calls in here.
//! See ARCHITECTURE.md for the map of modules.

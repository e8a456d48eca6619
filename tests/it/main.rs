//! The one integration-test binary: every test module is declared here, so the crate and
//! the test helpers are compiled once, and one throwaway PostgreSQL serves every test
//! (each test gets its own database). Helpers: `pg` (the server), `util` (guardians,
//! waiting on events), `browser` (a headless Chromium); this file holds no tests of its own.

mod badinput;
mod badrows;
mod blackhole;
mod bouncer;
mod browser;
mod chaos;
mod cli;
mod cli_fanout;
mod cli_flows;
mod concurrency;
mod core;
mod events;
mod fanout;
mod faults;
mod fleet;
mod flows;
mod flows_readme;
mod herd;
mod housekeeping;
mod import;
mod kill;
mod lifecycle;
mod metrics;
mod outages;
mod package;
mod performance;
mod pg;
mod pooled;
mod privilege;
mod results;
mod security;
mod smoke;
mod time;
mod tls;
mod upgrade;
mod util;
mod web;

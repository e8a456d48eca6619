//! The `sisy` command line: argument definitions and dispatch to the subcommands.
//!
//! Owns parsing (clap), the database connection of one-shot commands, and exit codes.
//! Everything except `sisy guardian` is a thin client over the SQL surface (tables, views,
//! `sisy.*` functions): no logic the SQL functions do not have. Output goes through
//! [`output`]; each group of subcommands lives in its own module.
//!
//! Exit codes: 0 success; 1 the operation failed (unknown job or run, refused value, …);
//! 2 bad usage (clap); 3 the database could not be reached.

/// `println!` for the command line's output: a reader that has gone (`sisy runs list | head`)
/// ends the command quietly, as it ends any other tool, instead of `println!`'s panic.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::output::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for the command line's output; see [`outln`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::output::write_out(format_args!($($arg)*)) };
}

mod fleet;
mod flows;
mod hosts;
mod import;
mod jobs;
pub mod output;
mod runs;
mod schedule;
mod status;

use std::path::PathBuf;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::GuardianConfig;
use crate::{db, guardian, migrate};
use output::Output;

pub use jobs::JobFields;

#[derive(Parser, Debug)]
#[command(
    name = "sisy",
    version,
    about = "cron for fleets of hosts, coordinated through PostgreSQL",
    after_help = "Exit codes: 0 success, 1 the operation failed, 2 bad usage, 3 the database could not be reached."
)]
pub struct Cli {
    /// Database URL (else SISY_DATABASE_URL, else the libpq PG* variables).
    #[arg(long, global = true, env = "SISY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Print machine-readable JSON instead of human tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the guardian daemon of this host.
    Guardian(GuardianArgs),
    /// Database schema.
    #[command(subcommand)]
    Db(DbCommand),
    /// Jobs: list, show, add, edit, remove, suspend, resume, trigger.
    #[command(subcommand)]
    Jobs(Box<JobsCommand>),
    /// Runs: list, show, logs, kill, retry.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Flows (jobs that run after other jobs): list, show, plot, cancel, rerun.
    #[command(subcommand)]
    Flows(FlowsCommand),
    /// Hosts: list, drain, undrain.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Cron expressions.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Sync jobs with a crontab file: a re-import updates, creates and removes jobs.
    ImportCrontab(import::ImportArgs),
    /// The fleet on one screen: hosts, running, failing jobs, missed runs.
    Status,
    /// The dashboard: a read-only web page of the fleet, jobs, runs, flows and missed runs.
    Web(WebArgs),
    /// A benchmark tool: N guardians in one process (see `cli/fleet.rs`).
    #[command(name = "__fleet", hide = true)]
    Fleet(fleet::FleetArgs),
}

#[derive(Args, Debug)]
pub struct GuardianArgs {
    /// Config file (default /etc/sisyphus/guardian.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (password redacted) and exit.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Args, Debug)]
pub struct WebArgs {
    /// Address to listen on; it has no authentication of its own: keep it on loopback, or
    /// put a reverse proxy that authenticates in front of it (README, "The dashboard").
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDRESS:PORT")]
    pub listen: std::net::SocketAddr,
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Create or upgrade the schema `sisy` (safe to run from many hosts at once).
    Migrate,
    /// Show the applied and pending schema versions.
    Status,
    /// Create the roles sisy_admin, sisy_guardian, sisy_reader and grant their rights.
    Roles,
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// All jobs with their status.
    List,
    /// One job: definition (the names of its env variables, not their values) and status.
    Show {
        name: String,
        /// Print the env values too (they may be secrets; sisy_reader may not read them).
        #[arg(long)]
        show_env_values: bool,
    },
    /// Create a job.
    Add {
        name: String,
        #[command(flatten)]
        fields: JobFields,
    },
    /// Change a job: only the options given change ('' clears schedule, max-runtime, run-as, workdir).
    Edit {
        name: String,
        #[command(flatten)]
        fields: JobFields,
        /// Remove these variables from the job's env.
        #[arg(long = "unset-env", value_name = "KEY")]
        unset_env: Vec<String>,
    },
    /// Delete a job (its run history stays; pending runs are cancelled).
    Rm { name: String },
    /// No new occurrences until resumed.
    Suspend { name: String },
    /// Schedule again from the next occurrence.
    Resume { name: String },
    /// Run now; prints the run id.
    Trigger { name: String },
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Recent runs, newest first.
    List(runs::ListArgs),
    /// One run, every column but the output.
    Show { id: i64 },
    /// The recorded output of a run.
    Logs { id: i64 },
    /// Cancel a pending run, or stop a running one (SIGTERM, SIGKILL after kill_grace).
    Kill { id: i64 },
    /// A new attempt of a finished run; prints its id.
    Retry { id: i64 },
}

#[derive(Subcommand, Debug)]
pub enum FlowsCommand {
    /// Flow runs, newest first.
    List(flows::ListArgs),
    /// One flow run, then one line per member (those not reached yet too).
    Show { id: i64 },
    /// Draw a flow: ROOT (a root job: its graph as declared now) or ID (a flow run: its
    /// graph as it ran, members coloured by state).
    Plot {
        /// A flow run id (an integer), else the name of a flow's root job.
        #[arg(value_name = "ROOT|ID")]
        target: String,
        /// dot (Graphviz text) or svg (drawn by sisy itself).
        #[arg(long, value_enum, default_value_t = flows::PlotFormat::Dot)]
        format: flows::PlotFormat,
    },
    /// Stop a running flow run: pending members cancelled, running ones killed.
    Cancel { id: i64 },
    /// Run again the members of an ended flow run that did not succeed (with --from: JOB
    /// and everything after it); prints how many were queued.
    Rerun {
        id: i64,
        /// Rerun this member and everything downstream of it.
        #[arg(long, value_name = "JOB")]
        from: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostsCommand {
    /// Hosts with liveness, capacity and load.
    List,
    /// Claim nothing new on HOST (running jobs go on).
    Drain { host: String },
    /// Claim again on HOST.
    Undrain { host: String },
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Print the next occurrences of EXPR in its zone and in UTC, or what is wrong with it.
    Check {
        expr: String,
        /// IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Start after this instant (RFC 3339, e.g. 2026-03-29T00:00:00Z); default now.
        #[arg(long)]
        after: Option<DateTime<Utc>>,
        /// How many occurrences.
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Exit {
    fn from(error: anyhow::Error) -> Exit {
        Exit { code: 1, error }
    }
}

/// Runs the command; the error carries its exit code.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> Result<(), Exit> {
    let output = Output::from_json_flag(cli.json);
    match cli.command {
        Command::Guardian(args) => Ok(run_guardian(args, shutdown).await?),
        Command::Fleet(args) => Ok(fleet::run(args, shutdown).await?),
        Command::Web(args) => Ok(web(cli.database_url.as_deref(), args, shutdown).await?),
        Command::Schedule(ScheduleCommand::Check {
            expr,
            tz,
            after,
            count,
        }) => Ok(schedule::check(&expr, &tz, after, count, output)?),
        command => {
            let mut client = client(cli.database_url.as_deref()).await?;
            let c = &mut client;
            // The schema is judged as a guardian judges it: a database to migrate, or one
            // too new for this binary, is said so instead of failing on a missing column.
            if !matches!(command, Command::Db(_)) {
                migrate::ensure_current(c).await?;
            }
            let done = match command {
                Command::Db(DbCommand::Migrate) => db_migrate(c, output).await,
                Command::Db(DbCommand::Status) => db_status(c, output).await,
                Command::Db(DbCommand::Roles) => db_roles(c, output).await,
                Command::Jobs(cmd) => jobs::run(c, *cmd, output).await,
                Command::Runs(cmd) => runs::run(c, cmd, output).await,
                Command::Flows(cmd) => flows::run(c, cmd, output).await,
                Command::Hosts(cmd) => hosts::run(c, cmd, output).await,
                Command::ImportCrontab(args) => import::run(c, &args, output == Output::Json).await,
                Command::Status => status::run(c, output).await,
                Command::Guardian(_)
                | Command::Fleet(_)
                | Command::Schedule(_)
                | Command::Web(_) => {
                    unreachable!("handled above")
                }
            };
            Ok(done?)
        }
    }
}

async fn run_guardian(args: GuardianArgs, shutdown: CancellationToken) -> Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    // Refuses a file other users could change (config::trust).
    let config = GuardianConfig::load(args.config.as_deref(), &env)?;
    if args.check_config {
        out!("{}", config.to_redacted_toml());
        return Ok(());
    }
    crate::logging::init(match config.log_format {
        crate::config::LogFormat::Json => crate::logging::Format::Json,
        crate::config::LogFormat::Human => crate::logging::Format::Human,
    });
    guardian::run(config, shutdown).await
}

/// `sisy web`: the schema is checked once (a database to migrate, or too new, is said so
/// at start, exit code 1; unreachable, exit code 3), then the dashboard serves until
/// SIGTERM or Ctrl-C; a database that goes away later is an error page, not an exit.
async fn web(url: Option<&str>, args: WebArgs, shutdown: CancellationToken) -> Result<(), Exit> {
    crate::logging::init(crate::logging::Format::Human);
    let url = database_url(url)?;
    let client = db::connect(&url)
        .await
        .map_err(|error| Exit { code: 3, error })?;
    migrate::ensure_current(&client).await?;
    drop(client);
    let bound = |address| outln!("sisy web: serving the dashboard on http://{address}/");
    Ok(crate::web::serve(&url, args.listen, bound, shutdown).await?)
}

/// The database URL of a command: given, or from the environment; none is exit code 3.
fn database_url(url: Option<&str>) -> Result<String, Exit> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    match url {
        Some(u) => Ok(u.to_string()),
        None => db::url_from_env(&env).ok_or_else(|| Exit {
            code: 3,
            error: anyhow::anyhow!(
                "no database given: pass --database-url, or set SISY_DATABASE_URL or the PG* variables"
            ),
        }),
    }
}

/// A client for the one-shot subcommands; failure to connect is exit code 3.
async fn client(url: Option<&str>) -> Result<Client, Exit> {
    let url = database_url(url)?;
    db::connect(&url)
        .await
        .map_err(|error| Exit { code: 3, error })
}

/// A database error as one sentence: PostgreSQL's own message (our functions raise
/// sentences that name the job, run or host), plus what to do.
pub(crate) fn sql_error(e: tokio_postgres::Error, hint: &str) -> anyhow::Error {
    let message = db::error_message(&e);
    if hint.is_empty() {
        anyhow::anyhow!("{message}")
    } else {
        anyhow::anyhow!("{message}: {hint}")
    }
}

async fn db_migrate(client: &mut Client, output: Output) -> Result<()> {
    let applied = migrate::migrate(client).await?;
    // Read in a transaction: a statement prepared and then run in two round trips stays on
    // one server connection even through a transaction pooler.
    let tx = client.transaction().await?;
    let status = migrate::status(&tx).await?;
    tx.commit().await?;
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::json!({ "applied_now": applied, "version": status.current() })
        );
    } else if applied.is_empty() {
        outln!("schema sisy is up to date (version {})", status.current());
    } else {
        outln!(
            "applied migrations {applied:?}; schema sisy is at version {}",
            status.current()
        );
    }
    Ok(())
}

async fn db_roles(client: &mut Client, output: Output) -> Result<()> {
    migrate::roles(client).await?;
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::json!({ "roles": ["sisy_admin", "sisy_guardian", "sisy_reader"] })
        );
    } else {
        outln!(
            "roles sisy_admin, sisy_guardian and sisy_reader are set up; make log-in roles members of them (CREATE ROLE alice LOGIN IN ROLE sisy_admin)"
        );
    }
    Ok(())
}

async fn db_status(client: &Client, output: Output) -> Result<()> {
    let status = migrate::status(client).await?;
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::json!({
                "version": status.current(),
                "latest": migrate::latest_version(),
                "applied": status.applied,
                "pending": status.pending,
                "newer": status.unknown.iter().map(|u| serde_json::json!({
                    "version": u.version,
                    "name": u.name,
                    "compatible_with": u.compatible_with,
                    "compatible": u.compatible(),
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    outln!(
        "schema version {} (this sisy knows {})",
        status.current(),
        migrate::latest_version()
    );
    for m in migrate::MIGRATIONS {
        let state = if status.applied.contains(&m.version) {
            "applied"
        } else {
            "pending"
        };
        outln!("  {:04}_{:<12} {state}", m.version, m.name);
    }
    for u in &status.unknown {
        let verdict = if u.compatible() {
            "applied by a newer sisy, compatible with this one"
        } else {
            "applied by a newer sisy, NOT compatible with this one: upgrade sisy on this host"
        };
        outln!("  {:04}_{:<12} {verdict}", u.version, u.name);
    }
    if !status.pending.is_empty() {
        outln!("run `sisy db migrate` to apply the pending migrations");
    }
    Ok(())
}

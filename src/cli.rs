//! The `sisy` command line: argument definitions and what each subcommand does.
//!
//! Owns parsing (clap), output formatting (human tables or `--json`) and exit codes.
//! Everything except `sisy guardian` is a thin client over the SQL surface: no logic the
//! SQL functions do not have. Errors come back as one sentence that says what to do.
//!
//! Exit codes: 0 success; 1 the operation failed (unknown job, database refused, …);
//! 2 bad usage (clap); 3 the database could not be reached.

use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::GuardianConfig;
use crate::schedule::Schedule;
use crate::{db, guardian, migrate};

#[derive(Parser, Debug)]
#[command(
    name = "sisy",
    version,
    about = "cron for fleets of hosts, coordinated through PostgreSQL"
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
    /// Cron expressions.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
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

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Create or upgrade the schema `sisy` (safe to run from many hosts at once).
    Migrate,
    /// Show the applied and pending schema versions.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Print the next occurrences of EXPR, or what is wrong with it.
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

/// Runs the command; the error carries its exit code.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> Result<(), Exit> {
    let fail = |error: anyhow::Error| Exit { code: 1, error };
    match cli.command {
        Command::Guardian(args) => run_guardian(args, shutdown).await.map_err(fail),
        Command::Db(cmd) => {
            let mut client = client(cli.database_url.as_deref()).await?;
            match cmd {
                DbCommand::Migrate => db_migrate(&mut client, cli.json).await.map_err(fail),
                DbCommand::Status => db_status(&client, cli.json).await.map_err(fail),
            }
        }
        Command::Schedule(ScheduleCommand::Check {
            expr,
            tz,
            after,
            count,
        }) => schedule_check(&expr, &tz, after, count, cli.json).map_err(fail),
    }
}

async fn run_guardian(args: GuardianArgs, shutdown: CancellationToken) -> Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = GuardianConfig::load(args.config.as_deref(), &env)?;
    if args.check_config {
        print!("{}", config.to_redacted_toml());
        return Ok(());
    }
    crate::logging::init(matches!(config.log_format, crate::config::LogFormat::Json));
    guardian::run(config, shutdown).await
}

/// A client for the one-shot subcommands; failure to connect is exit code 3.
async fn client(url: Option<&str>) -> Result<tokio_postgres::Client, Exit> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let url = match url {
        Some(u) => u.to_string(),
        None => crate::config::database_url_from_libpq(&env).ok_or_else(|| Exit {
            code: 3,
            error: anyhow::anyhow!(
                "no database given: pass --database-url, or set SISY_DATABASE_URL or the PG* variables"
            ),
        })?,
    };
    db::connect(&url)
        .await
        .map_err(|error| Exit { code: 3, error })
}

async fn db_migrate(client: &mut tokio_postgres::Client, json: bool) -> Result<()> {
    let applied = migrate::migrate(client).await?;
    let status = migrate::status(client).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "applied_now": applied, "version": status.current() })
        );
    } else if applied.is_empty() {
        println!("schema sisy is up to date (version {})", status.current());
    } else {
        println!(
            "applied migrations {applied:?}; schema sisy is at version {}",
            status.current()
        );
    }
    Ok(())
}

async fn db_status(client: &tokio_postgres::Client, json: bool) -> Result<()> {
    let status = migrate::status(client).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "version": status.current(),
                "latest": migrate::latest_version(),
                "applied": status.applied,
                "pending": status.pending,
            })
        );
    } else {
        println!(
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
            println!("  {:04}_{:<12} {state}", m.version, m.name);
        }
        if !status.pending.is_empty() {
            println!("run `sisy db migrate` to apply the pending migrations");
        }
    }
    Ok(())
}

fn schedule_check(
    expr: &str,
    tz: &str,
    after: Option<DateTime<Utc>>,
    count: usize,
    json: bool,
) -> Result<()> {
    let schedule =
        Schedule::parse(expr, tz).with_context(|| format!("the schedule '{expr}' is not valid"))?;
    let mut at = after.unwrap_or_else(Utc::now);
    let mut next = Vec::new();
    for _ in 0..count {
        match schedule.next_after(at) {
            Some(n) => {
                next.push(n);
                at = n;
            }
            None => break,
        }
    }
    let zone = schedule.timezone();
    if json {
        let list: Vec<_> = next
            .iter()
            .map(|n| serde_json::json!({ "local": n.with_timezone(&zone).to_rfc3339(), "utc": n.to_rfc3339() }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "expr": expr, "timezone": tz, "next": list })
        );
        return Ok(());
    }
    if next.is_empty() {
        println!(
            "'{expr}' never fires after {}",
            after.unwrap_or_else(Utc::now)
        );
    }
    for n in next {
        println!(
            "{}  {}",
            n.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S %Z (%:z)"),
            n.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    Ok(())
}

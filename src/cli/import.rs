//! `sisy import-crontab FILE`: a crontab becomes jobs.
//!
//! Owns reading the file, showing what the import would do (`--dry-run`, no database
//! needed) and upserting the jobs by their stable names, so re-importing the same file
//! changes nothing. Parsing and cron's rules are [`crate::crontab`]'s. All or nothing: when
//! any line is refused, nothing is imported.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use tokio_postgres::Client;

use super::{output, sql_error};
use crate::crontab::{self, ImportOptions, JobDef};
use crate::db::cli as q;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// A user crontab, or /etc/crontab-style file with a user column (see --system).
    pub file: PathBuf,
    /// Pool of the imported jobs.
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// Run the jobs of a user crontab as this user (default: the guardian's default user).
    #[arg(long)]
    pub run_as: Option<String>,
    /// The file has a user column (/etc/crontab, /etc/cron.d/*); implied for those paths.
    #[arg(long)]
    pub system: bool,
    /// Show what would be created, without touching the database.
    #[arg(long)]
    pub dry_run: bool,
    /// Label used in the job names (default: the file's name).
    #[arg(long)]
    pub name_prefix: Option<String>,
}

pub async fn run(client: Option<&mut Client>, args: &ImportArgs, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let path = args.file.to_string_lossy();
    let system = args.system || path == "/etc/crontab" || path.starts_with("/etc/cron.d/");
    let source = args.name_prefix.clone().unwrap_or_else(|| {
        args.file
            .file_name()
            .map_or("crontab".into(), |n| n.to_string_lossy().into_owned())
    });
    let opts = ImportOptions {
        system,
        source,
        run_as: args.run_as.clone(),
        pool: args.pool.clone(),
    };
    let import = crontab::parse(&text, &opts);
    for note in &import.notes {
        eprintln!("{}:{}: {}", path, note.line, note.message);
    }
    if !import.errors.is_empty() {
        for e in &import.errors {
            eprintln!("{}:{}: {}", path, e.line, e.message);
        }
        bail!(
            "{} line(s) of {} cannot be imported; nothing was imported: fix or remove them and run again",
            import.errors.len(),
            path
        );
    }
    match client {
        None => show(&import.jobs, json),
        Some(client) => upsert(client, &import.jobs, json).await,
    }
}

fn show(jobs: &[JobDef], json: bool) -> Result<()> {
    let rows: Vec<Value> = jobs
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    if !json {
        println!(
            "would import {} job(s) (dry run, nothing written):",
            jobs.len()
        );
    }
    output::rows(
        &rows,
        &[
            ("line", "LINE"),
            ("name", "NAME"),
            ("schedule", "SCHEDULE"),
            ("timezone", "TZ"),
            ("run_as", "RUN AS"),
            ("command", "COMMAND"),
        ],
        json,
    );
    Ok(())
}

async fn upsert(client: &mut Client, jobs: &[JobDef], json: bool) -> Result<()> {
    let tx = client.transaction().await?;
    let (mut created, mut updated, mut unchanged) = (0, 0, 0);
    for job in jobs {
        let env = Value::Object(job.env.clone());
        let rows = tx
            .query(
                q::JOBS_UPSERT,
                &[
                    &job.name,
                    &job.command,
                    &job.schedule,
                    &job.timezone,
                    &job.pool,
                    &job.run_as,
                    &env,
                ],
            )
            .await
            .map_err(|e| sql_error(e, &format!("line {}: nothing was imported", job.line)))?;
        match rows.first().map(|r| r.get::<_, bool>(0)) {
            Some(true) => created += 1,
            Some(false) => updated += 1,
            None => unchanged += 1,
        }
    }
    tx.commit().await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "created": created, "updated": updated, "unchanged": unchanged })
        );
    } else {
        println!(
            "imported {} job(s): {created} created, {updated} updated, {unchanged} unchanged",
            jobs.len()
        );
    }
    Ok(())
}

//! `sisy import-crontab FILE`: a crontab is a source of jobs, and each import syncs them.
//!
//! Owns reading the file, the source a file's jobs carry (`sisy.jobs.source`: the file's
//! absolute path, or `--source`), and applying the changes [`sync::plan`] decides, in one
//! transaction under an advisory lock, so that an import is all or nothing and imports run
//! at once see each other's jobs. `--dry-run` only reads (no lock, no row locks), so a
//! `sisy_reader` may run it: it compares env by variable names when the role may not read
//! the values. Parsing and cron's rules are [`crate::crontab`]'s. When any line is refused,
//! nothing is imported.

mod sync;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Transaction};

use super::{output, sql_error};
use crate::crontab::{self, ImportOptions, JobDef};
use crate::db::cli as q;
use crate::schedule::Schedule;
use sync::{Action, Change, Env, Existing};

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
    /// Show what the import would create, update and remove, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Label used in the job names (default: the file's name).
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// What the jobs of this file are known by: a re-import of the same source syncs them
    /// (default: the file's absolute path).
    #[arg(long)]
    pub source: Option<String>,
    /// IANA time zone of the entries no CRON_TZ applies to (default UTC).
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
    /// Suspend the jobs whose entries are gone from the file, instead of deleting them.
    #[arg(long)]
    pub suspend_removed: bool,
    /// Take over jobs of the same name that carry no source (imported before sources were
    /// recorded); never a job of another source.
    #[arg(long)]
    pub adopt: bool,
}

pub async fn run(client: &mut Client, args: &ImportArgs, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if let Some(zone) = &args.tz {
        Schedule::parse("* * * * *", zone).map_err(|e| anyhow::anyhow!("--tz {zone}: {e}"))?;
    }
    let source = source(args)?;
    let path = args.file.to_string_lossy();
    let system = args.system || path == "/etc/crontab" || path.starts_with("/etc/cron.d/");
    let label = args.name_prefix.clone().unwrap_or_else(|| {
        args.file
            .file_name()
            .map_or("crontab".into(), |n| n.to_string_lossy().into_owned())
    });
    let opts = ImportOptions {
        system,
        source: label,
        run_as: args.run_as.clone(),
        pool: args.pool.clone(),
        timezone: args.tz.clone(),
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
    let options = sync::Options {
        source: &source,
        suspend_removed: args.suspend_removed,
        adopt: args.adopt,
    };
    if args.dry_run {
        let (existing, names_only) = preview(client, &source, &import.jobs).await?;
        let plan = sync::plan(&import.jobs, &existing, &options)?;
        if names_only {
            eprintln!(
                "note: this database role cannot read job env values, so env was compared by their names only: a changed value alone is not shown"
            );
        }
        report(&source, &plan, args, json);
        return Ok(());
    }
    let tx = client.transaction().await?;
    tx.execute(q::JOBS_IMPORT_LOCK, &[])
        .await
        .map_err(|e| sql_error(e, "nothing was imported"))?;
    let existing = existing(&tx, &source, &import.jobs).await?;
    let plan = sync::plan(&import.jobs, &existing, &options)?;
    for change in &plan {
        apply(&tx, change, &source).await?;
    }
    tx.commit().await?;
    report(&source, &plan, args, json);
    Ok(())
}

/// The jobs a dry run compares with, read without locks, and whether only the names of
/// their env variables could be read (a role without SELECT on `env`, e.g. sisy_reader).
async fn preview(client: &Client, source: &str, jobs: &[JobDef]) -> Result<(Vec<Existing>, bool)> {
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let denied = |e: &tokio_postgres::Error| {
        e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    };
    match client
        .query(q::JOBS_IMPORT_PREVIEW, &[&source, &names])
        .await
    {
        Ok(rows) => Ok((
            rows.iter()
                .map(|r| existing_row(r, Env::Values(r.get("env"))))
                .collect(),
            false,
        )),
        Err(e) if denied(&e) => {
            let rows = client
                .query(q::JOBS_IMPORT_PREVIEW_NAMES, &[&source, &names])
                .await
                .map_err(|e| sql_error(e, "the dry run could not read the jobs"))?;
            let jobs = rows
                .iter()
                .map(|r| existing_row(r, Env::Names(r.get("env_keys"))))
                .collect();
            Ok((jobs, true))
        }
        Err(e) => Err(sql_error(e, "the dry run could not read the jobs")),
    }
}

/// `--source`, else the file's absolute path (so that the same file imported from another
/// directory is the same source).
fn source(args: &ImportArgs) -> Result<String> {
    if let Some(source) = &args.source {
        if source.trim().is_empty() {
            bail!("--source must not be empty: name the source, e.g. --source web01:/etc/crontab");
        }
        return Ok(source.clone());
    }
    let path = std::fs::canonicalize(&args.file)
        .with_context(|| format!("cannot resolve {}", args.file.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// The jobs the import may touch, locked: those of the source and those holding a name
/// an entry wants.
async fn existing(tx: &Transaction<'_>, source: &str, jobs: &[JobDef]) -> Result<Vec<Existing>> {
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let rows = tx
        .query(q::JOBS_IMPORT_EXISTING, &[&source, &names])
        .await
        .map_err(|e| sql_error(e, "nothing was imported"))?;
    Ok(rows
        .iter()
        .map(|r| existing_row(r, Env::Values(r.get("env"))))
        .collect())
}

fn existing_row(r: &tokio_postgres::Row, env: Env) -> Existing {
    Existing {
        id: r.get("id"),
        name: r.get("name"),
        source: r.get("source"),
        command: r.get("command"),
        schedule: r.get("schedule"),
        timezone: r.get("timezone"),
        pool: r.get("pool"),
        run_as: r.get("run_as"),
        env,
        suspended: r.get("suspended"),
    }
}

async fn apply(tx: &Transaction<'_>, change: &Change, source: &str) -> Result<()> {
    let result = match (change.action, &change.entry, change.id) {
        (Action::Create | Action::Update, Some(job), id) => {
            let env = Value::Object(job.env.clone());
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![
                &job.name,
                &job.command,
                &job.schedule,
                &job.timezone,
                &job.pool,
                &job.run_as,
                &env,
                &source,
            ];
            let statement = match (change.action, &id) {
                (Action::Update, Some(id)) => {
                    params.push(id);
                    q::JOBS_IMPORT_UPDATE
                }
                (Action::Update, None) => return Ok(()),
                _ => q::JOBS_IMPORT_CREATE,
            };
            tx.execute(statement, &params).await
        }
        (Action::Remove, _, Some(id)) => tx.execute(q::JOBS_IMPORT_REMOVE, &[&id]).await,
        (Action::Suspend, _, Some(id)) => tx.execute(q::JOBS_IMPORT_SUSPEND, &[&id]).await,
        _ => return Ok(()),
    };
    result.map(drop).map_err(|e| {
        let line = change.entry.as_ref().map(|j| j.line);
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            anyhow::anyhow!(
                "a job named '{}' was created while importing; nothing was imported: run the import again",
                change.name
            )
        } else if let Some(line) = line {
            sql_error(e, &format!("line {line}: nothing was imported"))
        } else {
            sql_error(e, &format!("job '{}': nothing was imported", change.name))
        }
    })
}

/// The counts, and the changes as a table (or all of them as JSON). Env values are never
/// shown: only that `env` changed.
fn report(source: &str, plan: &[Change], args: &ImportArgs, json: bool) {
    let count = |a: Action| plan.iter().filter(|c| c.action == a).count();
    let (create, update, unchanged) = (
        count(Action::Create),
        count(Action::Update),
        count(Action::Unchanged),
    );
    let (remove, suspend) = (count(Action::Remove), count(Action::Suspend));
    if json {
        let changes: Vec<Value> = plan.iter().map(row).collect();
        outln!(
            "{}",
            json!({
                "source": source, "dry_run": args.dry_run,
                "created": create, "updated": update, "removed": remove,
                "suspended": suspend, "unchanged": unchanged, "changes": changes,
            })
        );
        return;
    }
    let gone = if args.suspend_removed {
        (suspend, "suspend", "suspended")
    } else {
        (remove, "remove", "removed")
    };
    if args.dry_run {
        outln!(
            "import of {source} (dry run, nothing written): {create} to create, {update} to update, {} to {}, {unchanged} unchanged",
            gone.0,
            gone.1
        );
    } else {
        outln!(
            "imported {source}: {create} created, {update} updated, {} {}, {unchanged} unchanged",
            gone.0,
            gone.2
        );
    }
    // Unchanged jobs are listed only when they have something to say (suspended).
    let shown: Vec<Value> = plan
        .iter()
        .filter(|c| c.action != Action::Unchanged || c.suspended)
        .map(row)
        .collect();
    if !shown.is_empty() {
        output::rows(
            &shown,
            &[
                ("action", "CHANGE"),
                ("name", "NAME"),
                ("line", "LINE"),
                ("schedule", "SCHEDULE"),
                ("timezone", "TZ"),
                ("detail", "DETAIL"),
                ("command", "COMMAND"),
            ],
            false,
        );
    }
}

fn row(c: &Change) -> Value {
    let mut detail = c.fields.join(", ");
    if let Some(was) = &c.was {
        detail = format!("{detail} (was {was})");
    }
    if c.action == Action::Suspend {
        detail = "gone from the file".to_owned();
    } else if c.suspended && c.entry.is_some() {
        detail = format!("{detail} suspended: `sisy jobs resume {}` runs it", c.name);
    }
    json!({
        "action": c.action, "name": c.name, "was": c.was,
        "line": c.entry.as_ref().map(|j| j.line), "schedule": c.schedule,
        "timezone": c.timezone, "command": c.command, "changed": c.fields,
        "suspended": c.suspended, "detail": detail.trim(),
    })
}

//! `sisy runs …`: the result table `sisy.runs` and the functions `sisy.kill/retry`.

use std::io::Write;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::Value;
use tokio_postgres::Client;

use super::output::Output;
use super::{RunsCommand, sql_error};
use crate::db::RUN_STATES;
use crate::db::cli as q;

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only runs of this job.
    #[arg(long)]
    pub job: Option<String>,
    /// Only runs in this state.
    #[arg(long)]
    pub state: Option<String>,
    /// Only runs on (or for) this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only runs scheduled since: an RFC 3339 instant or a duration ago like 2h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many (newest first).
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

pub async fn run(client: &mut Client, cmd: RunsCommand, output: Output) -> Result<()> {
    match cmd {
        RunsCommand::List(args) => list(client, &args, output).await,
        RunsCommand::Show { id } => {
            let rows = client
                .query(q::RUNS_SHOW, &[&id])
                .await
                .map_err(|e| sql_error(e, ""))?;
            let Some(row) = rows.first() else {
                bail!("no run with id {id}: see `sisy runs list`")
            };
            let mut run: Value = row.get(0);
            if output == Output::Human && !run["item"].is_null() {
                run["item"] = Value::String(item_text(&run["item"], SHOWN_ITEM));
            }
            output.record(&run);
            Ok(())
        }
        RunsCommand::Logs { id } => logs(client, id, output).await,
        RunsCommand::Kill { id } => {
            client
                .execute(q::RUNS_KILL, &[&id])
                .await
                .map_err(|e| sql_error(e, "see `sisy runs show ID`"))?;
            if output == Output::Json {
                outln!("{}", serde_json::json!({ "ok": true, "run_id": id }));
            } else {
                outln!("kill requested for run {id}");
            }
            Ok(())
        }
        RunsCommand::Retry { id } => {
            let row = client
                .query_one(q::RUNS_RETRY, &[&id])
                .await
                .map_err(|e| sql_error(e, "see `sisy runs show ID`"))?;
            let new: i64 = row.get(0);
            if output == Output::Json {
                outln!("{}", serde_json::json!({ "run_id": new }));
            } else {
                outln!("{new}");
            }
            Ok(())
        }
    }
}

async fn list(client: &Client, a: &ListArgs, output: Output) -> Result<()> {
    if let Some(state) = &a.state
        && !RUN_STATES.contains(&state.as_str())
    {
        bail!(
            "unknown state '{state}': use one of {}",
            RUN_STATES.join(", ")
        );
    }
    if a.limit < 1 {
        bail!("--limit must be at least 1");
    }
    let (since_at, since_ago) = since(a.since.as_deref())?;
    let rows = client
        .query(
            q::RUNS_LIST,
            &[&a.job, &a.state, &a.host, &since_at, &since_ago, &a.limit],
        )
        .await
        .map_err(|e| sql_error(e, ""))?;
    let mut rows: Vec<Value> = rows.iter().map(|r| r.get(0)).collect();
    if output == Output::Human {
        for row in &mut rows {
            row["item"] = item_cell(row);
        }
    }
    output.rows(
        &rows,
        &[
            ("id", "ID"),
            ("job_name", "JOB"),
            ("attempt", "TRY"),
            ("reason", "REASON"),
            ("state", "STATE"),
            ("item", "ITEM"),
            ("host", "HOST"),
            ("scheduled_for", "SCHEDULED (UTC)"),
            ("finished_at", "FINISHED (UTC)"),
            ("exit_code", "EXIT"),
            ("error", "ERROR"),
        ],
    );
    Ok(())
}

/// How much of an item `runs show` prints (`--json` has all of it).
const SHOWN_ITEM: usize = 500;

/// How much of an item a `runs list` row shows.
const LISTED_ITEM: usize = 30;

/// The ITEM cell of a run of a fan-out member: `3: "b.csv"` (its index, then the item cut
/// short); NULL ("-") for any other run.
fn item_cell(row: &Value) -> Value {
    match row["item_index"].as_i64() {
        Some(i) => Value::String(format!("{i}: {}", item_text(&row["item"], LISTED_ITEM))),
        None => Value::Null,
    }
}

/// An item as compact JSON on one line, cut to `max` characters with an ellipsis (an item
/// may be a large object: the command line shows its start, `--json` all of it).
fn item_text(item: &Value, max: usize) -> String {
    let text = item.to_string();
    if text.chars().count() <= max {
        return text;
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// `--since` as an instant, or as seconds before the database's now.
fn since(value: Option<&str>) -> Result<(Option<DateTime<Utc>>, Option<f64>)> {
    let Some(v) = value else {
        return Ok((None, None));
    };
    if let Ok(at) = DateTime::parse_from_rfc3339(v) {
        return Ok((Some(at.with_timezone(&Utc)), None));
    }
    match humantime::parse_duration(v) {
        Ok(d) => Ok((None, Some(d.as_secs_f64()))),
        Err(_) => bail!(
            "--since takes an instant like 2026-11-22T07:00:00Z or a duration like 2h, got '{v}'"
        ),
    }
}

async fn logs(client: &Client, id: i64, output: Output) -> Result<()> {
    let rows = client
        .query(q::RUNS_LOGS, &[&id])
        .await
        .map_err(|e| sql_error(e, ""))?;
    let Some(row) = rows.first() else {
        bail!("no run with id {id}: see `sisy runs list`")
    };
    let (state, out, total): (String, Option<String>, Option<i64>) =
        (row.get(0), row.get(1), row.get(2));
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::json!({ "run_id": id, "state": state, "output": out, "output_bytes": total })
        );
        return Ok(());
    }
    let Some(out) = out else {
        bail!(
            "run {id} has no recorded output (state {state}): output is recorded when a run ends"
        );
    };
    if let Some(total) = total.filter(|t| *t as usize > out.len()) {
        eprintln!("(the last {} of {total} bytes)", out.len());
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

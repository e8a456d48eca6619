//! `sisy jobs …`: jobs through the table `sisy.jobs`, the view `sisy.job_status` and the
//! functions `sisy.suspend/resume/trigger`.
//!
//! Owns turning options into parameters of the catalogued statements. The only check made
//! here rather than in SQL is the cron expression (with the guardians' own parser), so a
//! typo is refused at once instead of being flagged a few seconds later.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Map, Value};
use tokio_postgres::Client;

use super::output::Output;
use super::{JobsCommand, sql_error};
use crate::db::cli as q;
use crate::schedule::Schedule;

/// The columns of a job as options (shared by `add` and `edit`).
#[derive(Args, Debug, Default)]
pub struct JobFields {
    /// Shell command, run as /bin/sh -c COMMAND.
    #[arg(long)]
    pub command: Option<String>,
    /// Cron expression (5 fields, or 6 with seconds, or @daily …); '' = only when triggered.
    #[arg(long)]
    pub schedule: Option<String>,
    /// IANA time zone of the schedule (default UTC).
    #[arg(long = "tz")]
    pub timezone: Option<String>,
    /// Pool of hosts that may run it (default "default").
    #[arg(long)]
    pub pool: Option<String>,
    /// any (one host per occurrence) or all (every live host of the pool).
    #[arg(long)]
    pub target: Option<String>,
    /// How late a run may still start, e.g. 5m.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Wall-clock limit, e.g. 1h ('' = none).
    #[arg(long)]
    pub max_runtime: Option<String>,
    /// Between SIGTERM and SIGKILL, e.g. 10s.
    #[arg(long)]
    pub kill_grace: Option<String>,
    /// Extra attempts after a failure.
    #[arg(long = "retries")]
    pub max_retries: Option<i32>,
    /// Delay before the first retry (doubles each time), e.g. 30s.
    #[arg(long)]
    pub retry_delay: Option<String>,
    /// forbid, allow or replace.
    #[arg(long)]
    pub overlap: Option<String>,
    /// Random delay added to each occurrence, e.g. 30s.
    #[arg(long)]
    pub jitter: Option<String>,
    /// Unix user to run as ('' = the guardian's default user).
    #[arg(long)]
    pub run_as: Option<String>,
    /// Environment variable K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory ('' = the user's home).
    #[arg(long)]
    pub workdir: Option<String>,
    /// Create it suspended (add only).
    #[arg(long)]
    pub suspended: bool,
    /// Run after JOB in its flow (repeatable); on edit the list replaces the job's
    /// upstreams ('' = none).
    #[arg(long = "after", value_name = "JOB")]
    pub after: Vec<String>,
    /// When it runs in its flow: all_success (default), all_done, one_success, one_failed
    /// or none_failed.
    #[arg(long, value_name = "RULE")]
    pub trigger_rule: Option<String>,
    /// Its failure counts as success for its flow (true when given without a value).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub continue_on_failure: Option<bool>,
    /// On a flow's root: the whole flow run's wall-clock limit, e.g. 2h ('' = none).
    #[arg(long, value_name = "DURATION")]
    pub flow_timeout: Option<String>,
    /// In a flow: one run per item of this jsonpath over SISY_INPUTS, e.g.
    /// '$.list_files.files[*]' ('' = none).
    #[arg(long, value_name = "PATH")]
    pub foreach: Option<String>,
    /// At most N runs of the job running at once across the fleet, items included ('' =
    /// no limit).
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<String>,
}

pub async fn run(client: &mut Client, cmd: JobsCommand, output: Output) -> Result<()> {
    match cmd {
        JobsCommand::List => list(client, output).await,
        JobsCommand::Show {
            name,
            show_env_values,
        } => show(client, &name, show_env_values, output).await,
        JobsCommand::Add { name, fields } => add(client, &name, &fields, output).await,
        JobsCommand::Edit {
            name,
            fields,
            unset_env,
        } => edit(client, &name, &fields, &unset_env, output).await,
        JobsCommand::Rm { name } => {
            let rows = client
                .query(q::JOBS_RM, &[&name])
                .await
                .map_err(|e| sql_error(e, ""))?;
            if rows.is_empty() {
                bail!("no job named '{name}': see `sisy jobs list`");
            }
            done(
                output,
                &format!("deleted job '{name}' (its run history stays)"),
            );
            Ok(())
        }
        JobsCommand::Suspend { name } => {
            call(client, q::JOBS_SUSPEND, &name, output, "suspended").await
        }
        JobsCommand::Resume { name } => {
            call(client, q::JOBS_RESUME, &name, output, "resumed").await
        }
        JobsCommand::Trigger { name } => {
            let row = client
                .query_one(q::JOBS_TRIGGER, &[&name])
                .await
                .map_err(|e| sql_error(e, "see `sisy jobs list`"))?;
            let id: i64 = row.get(0);
            if output == Output::Json {
                outln!("{}", serde_json::json!({ "run_id": id }));
            } else {
                outln!("{id}");
            }
            Ok(())
        }
    }
}

async fn list(client: &Client, output: Output) -> Result<()> {
    let rows = client
        .query(q::JOBS_LIST, &[])
        .await
        .map_err(|e| sql_error(e, ""))?;
    let rows: Vec<Value> = rows.iter().map(|r| r.get(0)).collect();
    output.rows(
        &rows,
        &[
            ("name", "NAME"),
            ("schedule", "SCHEDULE"),
            ("timezone", "TZ"),
            ("pool", "POOL"),
            ("suspended", "SUSPENDED"),
            ("next_due", "NEXT DUE (UTC)"),
            ("last_state", "LAST"),
            ("consecutive_failures", "FAILS"),
            ("running", "RUNNING"),
            ("schedule_error", "SCHEDULE ERROR"),
        ],
    );
    Ok(())
}

/// The job, its env variables by name only unless `with_values` (asked for explicitly:
/// values are where secrets live, and a role without the right is refused, not shown less).
async fn show(client: &Client, name: &str, with_values: bool, output: Output) -> Result<()> {
    let env = if with_values {
        let rows = client.query(q::JOBS_SHOW_ENV, &[&name]).await.map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                anyhow::anyhow!("this database role cannot read job env values (only sisy_admin may): run without --show-env-values to see the variable names")
            } else {
                sql_error(e, "")
            }
        })?;
        rows.first().map(|r| r.get::<_, Value>(0))
    } else {
        None
    };
    let rows = client
        .query(q::JOBS_SHOW, &[&name])
        .await
        .map_err(|e| sql_error(e, ""))?;
    let Some(row) = rows.first() else {
        bail!("no job named '{name}': see `sisy jobs list`");
    };
    let mut job: Value = row.get(0);
    if let Some(env) = env {
        job["env"] = env;
    }
    if output == Output::Human {
        // One line a person reads: `MODE, TOKEN` rather than a JSON array.
        let keys = job["env_keys"].as_array().map(|keys| {
            let names: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
            names.join(", ")
        });
        job["env_keys"] = keys
            .filter(|k| !k.is_empty())
            .map_or(Value::Null, Value::String);
        for side in ["upstreams", "downstreams"] {
            job[side] = edges_line(&job[side]);
        }
    }
    output.record(&job);
    Ok(())
}

async fn add(client: &mut Client, name: &str, f: &JobFields, output: Output) -> Result<()> {
    let Some(command) = &f.command else {
        bail!("a job needs a command: add --command 'what to run'");
    };
    check_schedule(f)?;
    let env = env_object(&f.env)?;
    // Two statements, one transaction: the INSERT leaves every column with a default to the
    // table, the UPDATE sets those the command line gave (see jobs_add.sql).
    let created = sql_error_for(name);
    let tx = client.transaction().await.map_err(created)?;
    let row = tx
        .query_one(
            q::JOBS_ADD,
            &[
                &name,
                command,
                &f.schedule,
                &f.max_runtime,
                &f.run_as,
                &f.workdir,
                &f.flow_timeout,
                &f.foreach,
                &f.max_concurrency,
            ],
        )
        .await
        .map_err(created)?;
    let id: i64 = row.get(0);
    tx.execute(
        q::JOBS_ADD_GIVEN,
        &[
            &id,
            &f.timezone,
            &f.pool,
            &f.target,
            &f.ttl,
            &f.kill_grace,
            &f.max_retries,
            &f.retry_delay,
            &f.overlap,
            &f.jitter,
            &env,
            &f.suspended,
            &f.trigger_rule,
            &f.continue_on_failure,
        ],
    )
    .await
    .map_err(created)?;
    // The edges last, in the same transaction: a refused one (a schedule, an unknown job)
    // leaves no job behind.
    if let Some(upstreams) = upstreams(&f.after) {
        tx.execute(q::JOBS_AFTER_ADD, &[&name, &upstreams])
            .await
            .map_err(created)?;
    }
    tx.commit().await.map_err(created)?;
    if output == Output::Json {
        outln!("{}", serde_json::json!({ "id": id, "name": name }));
    } else {
        outln!("created job '{name}' (id {id})");
    }
    Ok(())
}

/// The words for a refused `add` of job `name`.
fn sql_error_for(name: &str) -> impl Fn(tokio_postgres::Error) -> anyhow::Error + Copy + '_ {
    move |e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            anyhow::anyhow!(
                "a job named '{name}' already exists: change it with `sisy jobs edit` or pick another name"
            )
        } else {
            sql_error(e, "nothing was created")
        }
    }
}

async fn edit(
    client: &mut Client,
    name: &str,
    f: &JobFields,
    unset: &[String],
    output: Output,
) -> Result<()> {
    check_schedule(f)?;
    let env = if f.env.is_empty() {
        None
    } else {
        env_object(&f.env)?
    };
    let unset: Option<Vec<String>> = (!unset.is_empty()).then(|| unset.to_vec());
    let upstreams = upstreams(&f.after);
    let refused = |e| sql_error(e, "nothing was changed");
    // One transaction, in the order the database's checks need: the upstreams no longer
    // given go first (a job may then get a schedule), the row changes, then the new edges
    // (a job whose schedule was just cleared may run after another).
    let tx = client.transaction().await.map_err(refused)?;
    if let Some(upstreams) = &upstreams {
        tx.execute(q::JOBS_AFTER_KEEP, &[&name, upstreams])
            .await
            .map_err(refused)?;
    }
    let rows = tx
        .query(
            q::JOBS_EDIT,
            &[
                &name,
                &f.command,
                &f.schedule,
                &f.timezone,
                &f.pool,
                &f.target,
                &f.ttl,
                &f.max_runtime,
                &f.kill_grace,
                &f.max_retries,
                &f.retry_delay,
                &f.overlap,
                &f.jitter,
                &f.run_as,
                &env,
                &unset,
                &f.workdir,
                &f.trigger_rule,
                &f.continue_on_failure,
                &f.flow_timeout,
                &f.foreach,
                &f.max_concurrency,
            ],
        )
        .await
        .map_err(refused)?;
    if rows.is_empty() {
        bail!("no job named '{name}': see `sisy jobs list`");
    }
    if let Some(upstreams) = &upstreams {
        tx.execute(q::JOBS_AFTER_ADD, &[&name, upstreams])
            .await
            .map_err(refused)?;
    }
    tx.commit().await.map_err(refused)?;
    done(output, &format!("updated job '{name}'"));
    Ok(())
}

async fn call(client: &Client, sql: &str, name: &str, output: Output, what: &str) -> Result<()> {
    client
        .execute(sql, &[&name])
        .await
        .map_err(|e| sql_error(e, "see `sisy jobs list`"))?;
    done(output, &format!("{what} job '{name}'"));
    Ok(())
}

fn done(output: Output, message: &str) {
    if output == Output::Json {
        outln!("{}", serde_json::json!({ "ok": true, "message": message }));
    } else {
        outln!("{message}");
    }
}

/// The schedule and zone, checked with the guardians' parser (an empty schedule clears it).
fn check_schedule(f: &JobFields) -> Result<()> {
    if let Some(expr) = f.schedule.as_deref().filter(|s| !s.trim().is_empty()) {
        let tz = f.timezone.as_deref().unwrap_or("UTC");
        if let Err(e) = Schedule::parse(expr, tz) {
            bail!("the schedule '{expr}' is not valid: {e}; try `sisy schedule check '{expr}'`");
        }
    }
    Ok(())
}

/// A job's edges as one line: `extract, load if $.rows > 0`; NULL (shown "-") for none.
fn edges_line(edges: &Value) -> Value {
    let parts: Vec<String> = edges
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let job = e["job"].as_str()?;
            Some(match e["condition"].as_str() {
                Some(c) => format!("{job} if {c}"),
                None => job.to_string(),
            })
        })
        .collect();
    if parts.is_empty() {
        Value::Null
    } else {
        Value::String(parts.join(", "))
    }
}

/// The `--after` options as the set of upstreams they name: None when none was given (an
/// edit leaves the upstreams alone), empty for `--after ''` (an edit removes them all).
fn upstreams(after: &[String]) -> Option<Vec<String>> {
    if after.is_empty() {
        return None;
    }
    Some(after.iter().filter(|a| !a.is_empty()).cloned().collect())
}

/// K=V options as a JSON object.
fn env_object(pairs: &[String]) -> Result<Option<Value>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut map = Map::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            bail!("--env takes KEY=VALUE, got '{pair}'");
        };
        map.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(Some(Value::Object(map)))
}

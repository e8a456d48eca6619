//! `sisy flows …`: flow runs through the views `sisy.flow_status` and `sisy.flow_members`,
//! the functions `sisy.cancel_flow` and `sisy.rerun_flow`, and drawings of a flow.
//!
//! Owns turning arguments into the catalogued statements and printing what they return;
//! every decision (what is cancelled, what is re-queued, what a member's state is) is the
//! database's. `plot` reads a root's graph from `sisy.dependencies` (as declared now) or a
//! flow run's snapshot (as it ran); [`plot`] draws it.

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;
use tokio_postgres::Client;

use super::output::Output;
use super::{FlowsCommand, sql_error};
use crate::db::cli as q;
use crate::plot::{Graph, Items};

/// The states of a flow run (`sisy.flow_runs.state`).
const STATES: &[&str] = &[
    "running",
    "succeeded",
    "failed",
    "skipped",
    "cancelled",
    "timed_out",
];

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only flow runs of this root job.
    #[arg(long)]
    pub root: Option<String>,
    /// Only flow runs in this state.
    #[arg(long)]
    pub state: Option<String>,
    /// At most this many (newest first).
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
}

/// What `flows plot` writes.
#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlotFormat {
    /// Graphviz dot text (render it with `dot -Tpng`).
    #[default]
    Dot,
    /// An SVG image, laid out by sisy itself.
    Svg,
}

pub async fn run(client: &Client, cmd: FlowsCommand, output: Output) -> Result<()> {
    match cmd {
        FlowsCommand::List(args) => list(client, &args, output).await,
        FlowsCommand::Show { id } => show(client, id, output).await,
        FlowsCommand::Plot { target, format } => plot(client, &target, format, output).await,
        FlowsCommand::Cancel { id } => {
            client
                .execute(q::FLOWS_CANCEL, &[&id])
                .await
                .map_err(|e| sql_error(e, "see `sisy flows show ID`"))?;
            if output == Output::Json {
                outln!("{}", serde_json::json!({ "ok": true, "flow_run_id": id }));
            } else {
                outln!("cancelled flow run {id}: pending members cancelled, running ones killed");
            }
            Ok(())
        }
        FlowsCommand::Rerun { id, from } => {
            let row = client
                .query_one(q::FLOWS_RERUN, &[&id, &from])
                .await
                .map_err(|e| sql_error(e, "see `sisy flows show ID`"))?;
            let queued: i32 = row.get(0);
            if output == Output::Json {
                outln!(
                    "{}",
                    serde_json::json!({ "flow_run_id": id, "requeued": queued })
                );
            } else if queued == 0 {
                outln!("flow run {id}: nothing to run again (every member succeeded)");
            } else {
                outln!("flow run {id}: {queued} member(s) queued again");
            }
            Ok(())
        }
    }
}

async fn list(client: &Client, a: &ListArgs, output: Output) -> Result<()> {
    if let Some(state) = &a.state
        && !STATES.contains(&state.as_str())
    {
        bail!(
            "unknown flow run state '{state}': use one of {}",
            STATES.join(", ")
        );
    }
    if a.limit < 1 {
        bail!("--limit must be at least 1");
    }
    let rows = client
        .query(q::FLOWS_LIST, &[&a.root, &a.state, &a.limit, &None::<i64>])
        .await
        .map_err(|e| sql_error(e, ""))?;
    let mut rows: Vec<Value> = rows.iter().map(|r| r.get(0)).collect();
    if output == Output::Human {
        for row in &mut rows {
            row["progress"] = Value::String(progress(row));
            row["failed_members"] = names(&row["failed_members"]);
        }
    }
    output.rows(
        &rows,
        &[
            ("id", "ID"),
            ("root_job", "ROOT"),
            ("scheduled_for", "SCHEDULED (UTC)"),
            ("state", "STATE"),
            ("progress", "MEMBERS"),
            ("finished_at", "FINISHED (UTC)"),
            ("failed_members", "FAILED"),
        ],
    );
    Ok(())
}

/// The flow run, then its members. JSON: the flow run's object with `members`.
async fn show(client: &Client, id: i64, output: Output) -> Result<()> {
    let rows = client
        .query(q::FLOWS_SHOW, &[&id])
        .await
        .map_err(|e| sql_error(e, ""))?;
    let Some(row) = rows.first() else {
        bail!("no flow run with id {id}: see `sisy flows list`");
    };
    let mut flow: Value = row.get(0);
    let members = client
        .query(q::FLOWS_MEMBERS, &[&id])
        .await
        .map_err(|e| sql_error(e, ""))?;
    let mut members: Vec<Value> = members.iter().map(|r| r.get(0)).collect();
    if output == Output::Json {
        flow["members"] = Value::Array(members);
        outln!("{flow}");
        return Ok(());
    }
    flow["failed_members"] = names(&flow["failed_members"]);
    output.record(&flow);
    outln!("");
    for m in &mut members {
        m["hosts"] = names(&m["hosts"]);
        m["items"] = Items::from_json(m).map_or(Value::Null, |i| Value::String(item_progress(&i)));
    }
    output.rows(
        &members,
        &[
            ("job", "JOB"),
            ("state", "STATE"),
            ("attempt", "TRY"),
            ("items", "ITEMS"),
            ("hosts", "HOSTS"),
            ("started_at", "STARTED (UTC)"),
            ("finished_at", "FINISHED (UTC)"),
            ("error", "ERROR"),
        ],
    );
    Ok(())
}

/// `plot ROOT|ID`: an argument that reads as an integer is a flow run (its snapshot, with
/// states); anything else is a root job (its graph as declared now). `--json` prints the
/// nodes and edges instead of a drawing.
async fn plot(client: &Client, target: &str, format: PlotFormat, output: Output) -> Result<()> {
    let (title, graph) = match target.parse::<i64>() {
        Ok(id) => run_graph(client, id).await?,
        Err(_) => job_graph(client, target).await?,
    };
    if output == Output::Json {
        outln!("{graph}");
        return Ok(());
    }
    let graph = Graph::from_json(&title, &graph);
    let drawing = match format {
        PlotFormat::Dot => graph.dot(),
        PlotFormat::Svg => graph.svg()? + "\n",
    };
    out!("{drawing}");
    Ok(())
}

async fn run_graph(client: &Client, id: i64) -> Result<(String, Value)> {
    let rows = client
        .query(q::FLOWS_GRAPH_RUN, &[&id])
        .await
        .map_err(|e| sql_error(e, ""))?;
    let Some(row) = rows.first() else {
        bail!("no flow run with id {id}: see `sisy flows list`");
    };
    let graph: Value = row.get(0);
    Ok((crate::plot::run_title(id, &graph), graph))
}

async fn job_graph(client: &Client, name: &str) -> Result<(String, Value)> {
    let row = client
        .query_one(q::FLOWS_GRAPH_JOB, &[&name])
        .await
        .map_err(|e| sql_error(e, ""))?;
    let graph: Value = row.get(0);
    if graph["exists"] != Value::Bool(true) {
        bail!("no job named '{name}': see `sisy jobs list`");
    }
    let roots: Vec<&str> = graph["roots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(root) = roots.first() {
        bail!(
            "job '{name}' is not the root of a flow (it runs after other jobs): plot its root with `sisy flows plot '{root}'`"
        );
    }
    if graph["edges"].as_array().is_none_or(Vec::is_empty) {
        bail!(
            "job '{name}' is not in a flow (no job runs after it): add one with `sisy jobs add NAME --after '{name}' …`"
        );
    }
    Ok((format!("flow of {name}"), graph))
}

/// "3/5 done, 1 running": how far a flow run is, from its counts in `sisy.flow_status`.
fn progress(row: &Value) -> String {
    let n = |k: &str| row[k].as_i64().unwrap_or(0);
    let done = n("succeeded") + n("failed") + n("skipped");
    let mut text = format!("{done}/{} done", n("members"));
    for (key, word) in [
        ("running", "running"),
        ("pending", "pending"),
        ("failed", "failed"),
    ] {
        if n(key) > 0 {
            text.push_str(&format!(", {} {word}", n(key)));
        }
    }
    text
}

/// "3/10 succeeded, 1 failed, 6 running": a fan-out member's items ("no items" for an
/// empty list).
fn item_progress(items: &Items) -> String {
    if items.total == 0 {
        return "no items".to_string();
    }
    let mut text = format!("{}/{} succeeded", items.succeeded, items.total);
    for (n, word) in items.others() {
        text.push_str(&format!(", {n} {word}"));
    }
    text
}

/// A JSON array of names as one comma-separated cell ("-" when empty or NULL).
fn names(v: &Value) -> Value {
    let list: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if list.is_empty() {
        Value::Null
    } else {
        Value::String(list.join(", "))
    }
}

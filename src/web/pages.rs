//! The dashboard's pages, one handler each: read the page's data with one statement
//! (`sql/queries/web/`, or the CLI's for the flow runs, one job and one flow run), then
//! write it as HTML. Lists are paged by keyset (`?after=` a name, `?before=` an id), never
//! by offset, so the thousandth page costs what the first does. A parameter that does not
//! read is a 400 page that says what was expected.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde_json::Value;

use super::frame::{self, Nav, job_link, link, run_link, state, text, when};
use super::{Problem, Web};
use crate::db::{RUN_STATES, cli as c, web as q};
use crate::plot::{self, Graph};
use crate::schedule::{Schedule, Zone};

/// Rows per page of a list.
const PAGE: i64 = 100;

type Params = Query<HashMap<String, String>>;
type Page = Result<Markup, Problem>;

/// A parameter given and not blank.
fn given<'a>(p: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    p.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A whole-number parameter (an id), or a 400 page naming it.
fn id(p: &HashMap<String, String>, key: &str) -> Result<Option<i64>, Problem> {
    given(p, key)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                Problem::BadRequest(format!(
                    "{key}={v:?} is not a run or flow run id (a whole number)"
                ))
            })
        })
        .transpose()
}

/// A time parameter (RFC 3339, or a date and time read in UTC), or a 400 page naming it.
fn time(p: &HashMap<String, String>, key: &str) -> Result<Option<DateTime<Utc>>, Problem> {
    let Some(v) = given(p, key) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    // What a datetime-local input sends: "2026-12-02T15:00", read in UTC.
    for format in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, format) {
            return Ok(Some(t.and_utc()));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    Err(Problem::BadRequest(format!(
        "{key}={v:?} is not a time: give e.g. 2026-12-02T15:00:00Z or 2026-12-02 15:00 (UTC)"
    )))
}

/// The one jsonb column of each row.
fn values(rows: Vec<tokio_postgres::Row>) -> Vec<Value> {
    rows.iter().map(|r| r.get::<_, Value>(0)).collect()
}

/// `/`: the hosts with their leases and load, and the counts worth a glance.
pub async fn fleet(State(web): State<Arc<Web>>) -> Page {
    let rows = web.read(q::FLEET, &[]).await?;
    let f = rows
        .first()
        .map(|r| r.get::<_, Value>(0))
        .unwrap_or_default();
    let hosts = f["hosts"].as_array().cloned().unwrap_or_default();
    let alive = hosts.iter().filter(|h| h["alive"] == true).count();
    let dead = hosts.len() - alive;
    let draining = hosts
        .iter()
        .filter(|h| h["alive"] == true && h["draining"] == true)
        .count();
    let capacity: i64 = hosts
        .iter()
        .filter(|h| h["alive"] == true)
        .filter_map(|h| h["capacity"].as_i64())
        .sum();
    let body = html! {
        dl.counts {
            div { dt { "hosts alive" } dd { (alive) } }
            div { dt { "draining" } dd { (draining) } }
            div { dt { "dead" } dd.bad[dead > 0] { (dead) } }
            div { dt { "capacity" } dd { (capacity) } }
            div { dt { "running" } dd { a href="/runs?state=running" { (text(&f["running"])) } } }
            div { dt { "pending" } dd { a href="/runs?state=pending" { (text(&f["pending"])) } } }
            div { dt { "jobs" } dd { a href="/jobs" { (text(&f["jobs"])) } } }
            @let inactive = f["jobs"].as_i64().unwrap_or(0) - f["jobs_active"].as_i64().unwrap_or(0);
            div { dt { "suspended or bad schedule" } dd { (inactive) } }
            div { dt { "flows running" } dd { a href="/flows" { (text(&f["flows_running"])) } } }
            div { dt { "failed, 24 h" } dd.bad[f["failed_24h"].as_i64() > Some(0)] { a href="/runs?state=failed" { (text(&f["failed_24h"])) } } }
            div { dt { "missed, 24 h" } dd.bad[f["missed_24h"].as_i64() > Some(0)] { a href="/missed" { (text(&f["missed_24h"])) } } }
        }
        h2 { "Hosts" }
        @if hosts.is_empty() {
            p.none { "No guardian has registered yet: start `sisy guardian` on a host." }
        } @else {
            table {
                (frame::head(&["host", "state", "lease left", "running / capacity", "pools", "version", "last seen", "started"]))
                tbody {
                    @for h in &hosts {
                        @let name = h["name"].as_str().unwrap_or_default();
                        tr.dead[h["alive"] != true] {
                            td { a href=(link("/runs", &[("host", Some(name))])) { (name) } }
                            td {
                                @if h["alive"] != true { span.state.bad { "dead" } }
                                @else if h["draining"] == true { span.state.pending { "draining" } }
                                @else { span.state.ok { "alive" } }
                            }
                            td.num {
                                @match h["lease_left"].as_f64() {
                                    Some(left) if left > 0.0 => { (format!("{left:.1} s")) }
                                    Some(left) => { "passed " (frame::span((-left) as u64)) " ago" }
                                    None => { "–" }
                                }
                            }
                            td.num { (text(&h["running"])) " / " (text(&h["capacity"])) }
                            td { (pools(&h["pools"])) }
                            td { (text(&h["version"])) }
                            td { (when(&h["last_seen"])) }
                            td { (when(&h["started_at"])) }
                        }
                    }
                }
            }
        }
    };
    Ok(frame::page("Fleet", Nav::Fleet, Some(frame::REFRESH), body))
}

fn pools(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Whether a job runs on its schedule: suspended, a schedule that cannot be used (why, in
/// the tooltip), or active.
fn job_status(j: &Value) -> Markup {
    html! {
        @if j["suspended"] == true { span.state.other { "suspended" } }
        @else if let Some(why) = j["schedule_error"].as_str() { span.state.bad title=(why) { "bad schedule" } }
        @else { span.state.ok { "active" } }
    }
}

/// A job's schedule in words and its next due time on the job's own clock, or why there is
/// none.
fn schedule_cell(j: &Value) -> Markup {
    let Some(expr) = j["schedule"].as_str() else {
        return html! { span.none { "no schedule (runs when triggered or after its upstreams)" } };
    };
    let tz = j["timezone"].as_str().unwrap_or("UTC");
    let words = Schedule::parse(expr, tz).map(|s| s.describe());
    html! {
        code { (expr) }
        @if tz != "UTC" { " " span.tz { (tz) } }
        br;
        @match &words {
            Ok(w) => span.words { (w) },
            Err(e) => span.state.bad { (e.to_string()) },
        }
    }
}

/// The next due time in the job's zone (and UTC in the tooltip).
fn next_due(j: &Value) -> Markup {
    let Some(t) = frame::instant(&j["next_due"]) else {
        return html! { span.none { "–" } };
    };
    let tz = j["timezone"].as_str().unwrap_or("UTC");
    let local = Zone::get(tz).ok().and_then(|z| {
        let abbr = z.abbreviation_at(t);
        z.at(t)
            .map(|l| format!("{} {abbr}", l.format("%Y-%m-%d %H:%M:%S")))
    });
    html! {
        time datetime=(t.to_rfc3339()) title=(format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S"))) {
            (local.unwrap_or_else(|| format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S"))))
        }
        " " span.age { (frame::age(t)) }
    }
}

/// `/jobs`: every job by name, a page at a time (`?after=NAME`), filtered by `?q=` (a part
/// of the name).
pub async fn jobs(State(web): State<Arc<Web>>, Query(p): Params) -> Page {
    let after = given(&p, "after").map(str::to_string);
    let search = given(&p, "q").map(str::to_string);
    let rows = web.read(q::JOBS, &[&after, &search, &PAGE]).await?;
    let jobs = values(rows);
    let last = jobs
        .last()
        .and_then(|j| j["name"].as_str())
        .filter(|_| jobs.len() as i64 == PAGE);
    let older = last.map(|name| link("/jobs", &[("q", search.as_deref()), ("after", Some(name))]));
    let body = html! {
        form.filters method="get" action="/jobs" {
            label { "name contains " input type="search" name="q" value=(search.as_deref().unwrap_or_default()); }
            button type="submit" { "Filter" }
        }
        @if jobs.is_empty() {
            p.none { @if after.is_some() { "No more jobs." } @else { "No jobs match." } }
        } @else {
            table {
                (frame::head(&["job", "status", "schedule", "next due (job's zone)", "last result", "failing streak", "running", "pool"]))
                tbody {
                    @for j in &jobs {
                        @let name = j["name"].as_str().unwrap_or_default();
                        tr {
                            td { (job_link(name)) @if j["is_root"] == true { " " a.tag href=(link("/flows", &[("root", Some(name))])) { "flow" } } }
                            td { (job_status(j)) }
                            td { (schedule_cell(j)) }
                            td { (next_due(j)) }
                            td {
                                @if let Some(id) = j["last_id"].as_i64() {
                                    a href=(format!("/run?id={id}")) { (state(&j["last_state"])) }
                                    @if let Some(code) = j["last_exit_code"].as_i64() { " exit " (code) }
                                    " " (when(&j["last_finished_at"]))
                                } @else { span.none { "never ran" } }
                            }
                            td.num {
                                @match j["failing"].as_i64() {
                                    Some(0) | None => { span.none { "0" } }
                                    Some(n) if n >= 1000 => { span.state.bad { "1000+" } }
                                    Some(n) => { span.state.bad { (n) } }
                                }
                            }
                            td.num { (text(&j["running"])) }
                            td { (text(&j["pool"])) }
                        }
                    }
                }
            }
        }
        (frame::pager(&link("/jobs", &[("q", search.as_deref())]), older))
    };
    Ok(frame::page("Jobs", Nav::Jobs, Some(frame::REFRESH), body))
}

/// `/job?name=`: one job's definition (its env's variable names, never their values), its
/// place in a flow, its status and its latest runs.
pub async fn job(State(web): State<Arc<Web>>, Query(p): Params) -> Page {
    let Some(name) = given(&p, "name").map(str::to_string) else {
        return Err(Problem::BadRequest(
            "which job? give its name: /job?name=NAME".to_string(),
        ));
    };
    let rows = web.read(c::JOBS_SHOW, &[&name]).await?;
    let Some(j) = rows.first().map(|r| r.get::<_, Value>(0)) else {
        return Err(Problem::NotFound(format!(
            "there is no job named {name:?} (it may have been removed; its runs are still listed under Runs)"
        )));
    };
    let runs = values(
        web.read(
            q::RUNS,
            &[
                &None::<i64>,
                &j["id"].as_i64(),
                &None::<String>,
                &None::<String>,
                &None::<DateTime<Utc>>,
                &None::<DateTime<Utc>>,
                &20_i64,
                &None::<String>,
                &None::<DateTime<Utc>>,
            ],
        )
        .await?,
    );
    let fields = [
        "command",
        "pool",
        "target",
        "run_as",
        "workdir",
        "ttl",
        "max_runtime",
        "kill_grace",
        "max_retries",
        "retry_delay",
        "overlap",
        "jitter",
        "max_concurrency",
        "trigger_rule",
        "continue_on_failure",
        "flow_timeout",
        "foreach",
        "source",
        "created_at",
        "updated_at",
    ];
    let body = html! {
        dl.definition {
            dt { "status" }
            dd {
                (job_status(&j))
                @if let Some(why) = j["schedule_error"].as_str() { " " span.error { (why) } }
                " · running now: " (text(&j["running"]))
                " · failing streak: " (text(&j["consecutive_failures"]))
                " · last success: " (when(&j["last_success_at"]))
            }
            dt { "schedule" } dd { (schedule_cell(&j)) }
            dt { "next due" } dd { (next_due(&j)) }
            @for f in fields {
                @if !j[f].is_null() {
                    dt { (f) }
                    dd {
                        @if f == "command" { pre.command { (text(&j[f])) } }
                        @else if f.ends_with("_at") { (when(&j[f])) }
                        @else { (text(&j[f])) }
                    }
                }
            }
            dt { "env" }
            dd {
                @let keys = j["env_keys"].as_array().cloned().unwrap_or_default();
                @if keys.is_empty() { span.none { "none" } }
                @else {
                    @for k in &keys { code { (text(k)) } " " }
                    span.none { "(names only: the values are not shown)" }
                }
            }
            @for (key, label) in [("upstreams", "runs after"), ("downstreams", "runs before")] {
                @let edges = j[key].as_array().cloned().unwrap_or_default();
                @if !edges.is_empty() {
                    dt { (label) }
                    dd { @for e in &edges {
                        (job_link(e["job"].as_str().unwrap_or_default()))
                        " (" (text(&e["condition"])) ") "
                    } }
                }
            }
        }
        h2 { "Latest runs" }
        (runs_table(&runs))
        p { a href=(link("/runs", &[("job", Some(&name))])) { "all runs of this job »" } }
    };
    Ok(frame::page(
        &format!("Job {name}"),
        Nav::Jobs,
        Some(frame::REFRESH),
        body,
    ))
}

/// A table of runs (the shape of `web/runs.sql`).
fn runs_table(runs: &[Value]) -> Markup {
    html! {
        @if runs.is_empty() {
            p.none { "No runs." }
        } @else {
            table {
                (frame::head(&["run", "job", "state", "host", "attempt", "scheduled for", "finished", "took", "exit", "error"]))
                tbody {
                    @for r in runs {
                        tr {
                            td.num { (run_link(r["id"].as_i64().unwrap_or_default())) }
                            td {
                                (job_link(r["job_name"].as_str().unwrap_or_default()))
                                @if let Some(i) = r["item_index"].as_i64() { " [" (i) "]" }
                            }
                            td { (state(&r["state"])) @if r["missed_count"].as_i64() > Some(1) { " ×" (text(&r["missed_count"])) } }
                            td { @match r["host"].as_str().or(r["target_host"].as_str()) {
                                Some(h) => a href=(link("/runs", &[("host", Some(h))])) { (h) },
                                None => span.none { "–" },
                            } }
                            td.num { (text(&r["attempt"])) }
                            td { (when(&r["scheduled_for"])) }
                            td { (when(&r["finished_at"])) }
                            td.num { (took(&r["started_at"], &r["finished_at"])) }
                            td.num {
                                @if let Some(s) = r["signal"].as_i64() { "signal " (s) }
                                @else { (text(&r["exit_code"])) }
                            }
                            td.error { (text(&r["error"])) }
                        }
                    }
                }
            }
        }
    }
}

/// How long a run took (or has been running).
fn took(started: &Value, finished: &Value) -> String {
    match frame::instant(started) {
        Some(s) => {
            let end = frame::instant(finished).unwrap_or_else(Utc::now);
            let ms = (end - s).num_milliseconds().max(0);
            if ms < 10_000 {
                format!("{:.1} s", ms as f64 / 1000.0)
            } else {
                frame::span((ms / 1000) as u64)
            }
        }
        None => "–".to_string(),
    }
}

/// `/runs`: runs newest first, filtered by `job`, `state`, `host`, a page at a time
/// (`?before=ID`); with a finish time window (`since`, `until`), the latest finish first
/// (`?before=ID&at=TIME`).
pub async fn runs(State(web): State<Arc<Web>>, Query(p): Params) -> Page {
    let before = id(&p, "before")?;
    let job = given(&p, "job").map(str::to_string);
    let host = given(&p, "host").map(str::to_string);
    let run_state = given(&p, "state").map(str::to_string);
    if let Some(s) = &run_state
        && !RUN_STATES.contains(&s.as_str())
    {
        return Err(Problem::BadRequest(format!(
            "state={s:?} is not a run state; one of: {}",
            RUN_STATES.join(", ")
        )));
    }
    let since = time(&p, "since")?;
    let until = time(&p, "until")?;
    // A job's runs by its id (an index); a job that no longer exists, by name.
    let (job_id, removed) = match &job {
        Some(name) => {
            let found = web.read(q::JOB_ID, &[&name]).await?;
            match found.first() {
                Some(row) => (Some(row.get::<_, i64>(0)), None),
                None => (None, Some(name.clone())),
            }
        }
        None => (None, None),
    };
    // A time window is read in finish order (runs_finished), a page ending at `at`.
    let window = since.is_some() || until.is_some();
    let at = time(&p, "at")?;
    let rows = web
        .read(
            match (window, &host) {
                (true, _) => q::RUNS_WINDOW,
                (false, Some(_)) => q::RUNS_HOST,
                (false, None) => q::RUNS,
            },
            &[
                &before,
                &job_id,
                &run_state,
                &host,
                &since,
                &until,
                &PAGE,
                &removed,
                &at.filter(|_| window),
            ],
        )
        .await?;
    let runs = values(rows);
    let since_text = given(&p, "since");
    let until_text = given(&p, "until");
    let filters = [
        ("job", job.as_deref()),
        ("state", run_state.as_deref()),
        ("host", host.as_deref()),
        ("since", since_text),
        ("until", until_text),
    ];
    let older = runs
        .last()
        .filter(|_| runs.len() as i64 == PAGE)
        .and_then(|last| {
            let id = last["id"].as_i64()?.to_string();
            let finished = frame::instant(&last["finished_at"]).map(|t| t.to_rfc3339());
            let mut pairs = filters.to_vec();
            pairs.push(("before", Some(&id)));
            if window {
                pairs.push(("at", finished.as_deref()));
            }
            Some(link("/runs", &pairs))
        });
    let body = html! {
        form.filters method="get" action="/runs" {
            label { "job " input type="text" name="job" value=(job.as_deref().unwrap_or_default()); }
            label { "state "
                select name="state" {
                    option value="" { "any" }
                    @for s in RUN_STATES {
                        option value=(s) selected[run_state.as_deref() == Some(*s)] { (s) }
                    }
                }
            }
            label { "host " input type="text" name="host" value=(host.as_deref().unwrap_or_default()); }
            label { "finished since " input type="text" name="since" placeholder="2026-12-02 15:00 (UTC)" value=(since_text.unwrap_or_default()); }
            label { "until " input type="text" name="until" placeholder="RFC 3339 or UTC" value=(until_text.unwrap_or_default()); }
            button type="submit" { "Filter" }
            " " a href="/runs" { "clear" }
        }
        (runs_table(&runs))
        (frame::pager(&link("/runs", &filters), older))
    };
    Ok(frame::page("Runs", Nav::Runs, Some(frame::REFRESH), body))
}

/// `/run?id=`: one run whole, its output as plain text.
pub async fn run(State(web): State<Arc<Web>>, Query(p): Params) -> Page {
    let Some(run_id) = id(&p, "id")? else {
        return Err(Problem::BadRequest(
            "which run? give its id: /run?id=ID".to_string(),
        ));
    };
    let rows = web.read(q::RUN, &[&run_id]).await?;
    let Some(r) = rows.first().map(|r| r.get::<_, Value>(0)) else {
        return Err(Problem::NotFound(format!(
            "there is no run {run_id} (runs are pruned after their retention period)"
        )));
    };
    let open = matches!(r["state"].as_str(), Some("pending" | "running"));
    let output = r["output"].as_str().map(frame::plain_output);
    let fields = [
        "reason",
        "attempt",
        "pool",
        "target_host",
        "host",
        "pid",
        "scheduled_for",
        "due_at",
        "deadline",
        "claimed_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
        "exit_code",
        "signal",
        "kill_requested_at",
        "item_index",
        "item",
        "inputs",
        "result",
    ];
    let body = html! {
        dl.definition {
            dt { "job" } dd { (job_link(r["job_name"].as_str().unwrap_or_default())) }
            dt { "state" } dd { (state(&r["state"])) " took " (took(&r["started_at"], &r["finished_at"])) }
            @if let Some(flow) = r["flow_run_id"].as_i64() {
                dt { "flow run" } dd { a href=(format!("/flow?id={flow}")) { (flow) } }
            }
            @for f in fields {
                @if !r[f].is_null() {
                    dt { (f) }
                    dd {
                        @if f.ends_with("_at") || f == "scheduled_for" || f == "deadline" { (when(&r[f])) }
                        @else if f == "host" || f == "target_host" {
                            a href=(link("/runs", &[("host", r[f].as_str())])) { (text(&r[f])) }
                        }
                        @else { (text(&r[f])) }
                    }
                }
            }
            @if r["missed_count"].as_i64() > Some(1) {
                dt { "occurrences" } dd { (text(&r["missed_count"])) " (one row for all of them)" }
            }
            @if !r["error"].is_null() {
                dt { "error" } dd.error { (text(&r["error"])) }
            }
        }
        h2 { "Output" }
        @match &output {
            Some(o) if !o.is_empty() => {
                pre.output { (o) }
                @if let Some(total) = r["output_bytes"].as_i64() {
                    @if total as usize > r["output"].as_str().map_or(0, str::len) {
                        p.none { "The job wrote " (total) " bytes; the last part is kept." }
                    }
                }
            }
            _ => { p.none { @if open { "No output yet." } @else { "No output." } } }
        }
    };
    Ok(frame::page(
        &format!("Run {run_id}"),
        Nav::Runs,
        open.then_some(5),
        body,
    ))
}

/// `/flows`: flow runs newest first, of one root with `?root=`, a page at a time.
pub async fn flows(State(web): State<Arc<Web>>, Query(p): Params) -> Page {
    let before = id(&p, "before")?;
    let root = given(&p, "root").map(str::to_string);
    let rows = web
        .read(c::FLOWS_LIST, &[&root, &None::<String>, &PAGE, &before])
        .await?;
    let flows = values(rows);
    let older = flows
        .last()
        .and_then(|f| f["id"].as_i64())
        .filter(|_| flows.len() as i64 == PAGE)
        .map(|last| {
            let last = last.to_string();
            link(
                "/flows",
                &[("root", root.as_deref()), ("before", Some(&last))],
            )
        });
    let body = html! {
        @if flows.is_empty() {
            p.none { "No flow runs." }
        } @else {
            table {
                (frame::head(&["flow run", "root", "state", "scheduled for", "members", "started", "finished", "failed members"]))
                tbody {
                    @for f in &flows {
                        @let fid = f["id"].as_i64().unwrap_or_default();
                        tr {
                            td.num { a href=(format!("/flow?id={fid}")) { (fid) } }
                            td { (job_link(f["root_job"].as_str().unwrap_or_default())) }
                            td { (state(&f["state"])) }
                            td { (when(&f["scheduled_for"])) }
                            td { (counts(f)) }
                            td { (when(&f["started_at"])) }
                            td { (when(&f["finished_at"])) }
                            td { @for m in f["failed_members"].as_array().into_iter().flatten() {
                                (job_link(m.as_str().unwrap_or_default())) " "
                            } }
                        }
                    }
                }
            }
        }
        (frame::pager(&link("/flows", &[("root", root.as_deref())]), older))
    };
    Ok(frame::page("Flows", Nav::Flows, Some(frame::REFRESH), body))
}

/// "5 members: 3 succeeded, 1 running, 1 waiting".
fn counts(f: &Value) -> String {
    let mut parts = Vec::new();
    for key in [
        "succeeded",
        "running",
        "pending",
        "waiting",
        "failed",
        "skipped",
    ] {
        if let Some(n) = f[key].as_i64().filter(|n| *n > 0) {
            parts.push(format!("{n} {key}"));
        }
    }
    format!("{}: {}", text_of(&f["members"]), parts.join(", "))
}

fn text_of(v: &Value) -> String {
    v.as_i64().map(|n| n.to_string()).unwrap_or_default()
}

/// `/flow?id=`: one flow run drawn as its graph (`/flow.svg`, the drawing of `sisy flows
/// plot`), and its members with their states.
pub async fn flow(State(web): State<Arc<Web>>, Query(p): Params) -> Page {
    let Some(flow_id) = id(&p, "id")? else {
        return Err(Problem::BadRequest(
            "which flow run? give its id: /flow?id=ID".to_string(),
        ));
    };
    let rows = web.read(c::FLOWS_SHOW, &[&flow_id]).await?;
    let Some(f) = rows.first().map(|r| r.get::<_, Value>(0)) else {
        return Err(Problem::NotFound(format!(
            "there is no flow run {flow_id} (finished flow runs are pruned after their retention period)"
        )));
    };
    let members = values(web.read(c::FLOWS_MEMBERS, &[&flow_id]).await?);
    let open = f["state"] == "running";
    let body = html! {
        dl.definition {
            dt { "root" } dd { (job_link(f["root_job"].as_str().unwrap_or_default())) }
            dt { "state" } dd { (state(&f["state"])) " · " (counts(&f)) }
            dt { "scheduled for" } dd { (when(&f["scheduled_for"])) }
            dt { "started" } dd { (when(&f["started_at"])) }
            dt { "finished" } dd { (when(&f["finished_at"])) }
            @if !f["deadline"].is_null() { dt { "deadline" } dd { (when(&f["deadline"])) } }
            @if !f["error"].is_null() { dt { "error" } dd.error { (text(&f["error"])) } }
        }
        figure.graph {
            img src=(format!("/flow.svg?id={flow_id}")) alt=(format!("the graph of flow run {flow_id}"));
        }
        h2 { "Members" }
        table {
            (frame::head(&["job", "state", "trigger rule", "runs", "latest run", "hosts", "started", "finished", "error"]))
            tbody {
                @for m in &members {
                    tr {
                        td { (job_link(m["job"].as_str().unwrap_or_default())) }
                        td {
                            (state(&m["state"]))
                            @if let Some(items) = plot::Items::from_json(m) { " " (items.counts()) }
                        }
                        td { (text(&m["trigger_rule"])) }
                        td.num { (text(&m["runs"])) }
                        td.num { @if let Some(r) = m["run_id"].as_i64() { (run_link(r)) } @else { span.none { "–" } } }
                        td { (pools(&m["hosts"])) }
                        td { (when(&m["started_at"])) }
                        td { (when(&m["finished_at"])) }
                        td.error { (text(&m["error"])) }
                    }
                }
            }
        }
    };
    Ok(frame::page(
        &format!("Flow run {flow_id}"),
        Nav::Flows,
        open.then_some(frame::REFRESH),
        body,
    ))
}

/// `/flow.svg?id=`: the flow run's graph, members coloured by state: the SVG of `sisy flows
/// plot ID`. Served as an image of its own, so that nothing in it runs in the page.
pub async fn flow_svg(State(web): State<Arc<Web>>, Query(p): Params) -> Result<Response, Problem> {
    let Some(flow_id) = id(&p, "id")? else {
        return Err(Problem::BadRequest(
            "which flow run? give its id: /flow.svg?id=ID".to_string(),
        ));
    };
    let rows = web.read(c::FLOWS_GRAPH_RUN, &[&flow_id]).await?;
    let Some(graph) = rows.first().map(|r| r.get::<_, Value>(0)) else {
        return Err(Problem::NotFound(format!("there is no flow run {flow_id}")));
    };
    let svg = Graph::from_json(&plot::run_title(flow_id, &graph), &graph)
        .svg()
        .map_err(|e| Problem::Drawing(format!("the graph could not be drawn: {e:#}")))?;
    Ok((
        [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
        svg,
    )
        .into_response())
}

/// `/missed`: occurrences that never ran (expired, skipped), the jobs overdue now, and the
/// dead hosts.
pub async fn missed(State(web): State<Arc<Web>>, Query(p): Params) -> Page {
    let before = id(&p, "before")?;
    let rows = web.read(q::MISSED, &[&before, &PAGE]).await?;
    let m = rows
        .first()
        .map(|r| r.get::<_, Value>(0))
        .unwrap_or_default();
    let missed = m["missed"].as_array().cloned().unwrap_or_default();
    let overdue = m["overdue"].as_array().cloned().unwrap_or_default();
    let dead = m["dead_hosts"].as_array().cloned().unwrap_or_default();
    let older = missed
        .last()
        .and_then(|r| r["id"].as_i64())
        .filter(|_| missed.len() as i64 == PAGE)
        .map(|last| format!("/missed?before={last}"));
    let body = html! {
        @if before.is_none() {
            h2 { "Overdue jobs" }
            @if overdue.is_empty() {
                p.none { "None: every job's occurrences are being materialised." }
            } @else {
                p { "Their next occurrence is overdue by more than its ttl: no live guardian serves their pool." }
                table {
                    (frame::head(&["job", "pool", "schedule", "was due"]))
                    tbody { @for o in &overdue { tr {
                        td { (job_link(o["name"].as_str().unwrap_or_default())) }
                        td { (text(&o["pool"])) }
                        td { code { (text(&o["schedule"])) } }
                        td { (when(&o["next_due"])) }
                    } } }
                }
            }
            h2 { "Dead hosts" }
            @if dead.is_empty() {
                p.none { "None." }
            } @else {
                table {
                    (frame::head(&["host", "pools", "last seen"]))
                    tbody { @for d in &dead { tr {
                        td { a href=(link("/runs", &[("host", d["name"].as_str())])) { (text(&d["name"])) } }
                        td { (pools(&d["pools"])) }
                        td { (when(&d["last_seen"])) }
                    } } }
                }
            }
        }
        h2 { "Missed occurrences" }
        @if missed.is_empty() {
            p.none { "None." }
        } @else {
            table {
                (frame::head(&["run", "job", "state", "occurrences", "scheduled for", "recorded", "why"]))
                tbody { @for r in &missed { tr {
                    td.num { (run_link(r["id"].as_i64().unwrap_or_default())) }
                    td { (job_link(r["job_name"].as_str().unwrap_or_default())) }
                    td { (state(&r["state"])) }
                    td.num { (text(&r["missed_count"])) }
                    td { (when(&r["scheduled_for"])) }
                    td { (when(&r["finished_at"])) }
                    td.error { (text(&r["error"])) }
                } } }
            }
        }
        (frame::pager("/missed", older))
    };
    Ok(frame::page(
        "Missed runs and dead hosts",
        Nav::Missed,
        Some(frame::REFRESH),
        body,
    ))
}

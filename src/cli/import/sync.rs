//! The difference between a crontab and the jobs imported from the same source before: what
//! a re-import creates, updates, removes (or suspends) and leaves alone.
//!
//! Pure: it gets the entries of the file and the jobs the database holds under the source
//! (or under a name an entry wants) and returns the changes, or refuses. The CLI applies the
//! changes in one transaction, or prints them for `--dry-run`.
//!
//! Matching an entry to a job, in this order:
//!
//! 1. **By name.** Names are derived from the entry's user, schedule, zone and command
//!    ([`crate::crontab`]), so an entry whose only change is its `env` or pool keeps its
//!    name and its job is updated.
//! 2. **By what stayed.** An entry whose schedule or zone changed gets a new name; when
//!    exactly one unmatched job of the source and exactly one unmatched entry share user
//!    and command (else: user, schedule and zone), the job is updated in place and renamed,
//!    so it keeps its id, its history and whatever columns were set by hand (ttl, retries…).
//! 3. The rest: entries become new jobs, jobs of the source no entry matched are removed,
//!    or suspended with `--suspend-removed`.
//!
//! A job an entry's name would take that does not belong to the source (made by hand, or
//! imported from another source) is never taken over: the whole import is refused, unless
//! `--adopt` and the job carries no source at all (imported before sources were recorded).

use std::collections::{HashMap, HashSet};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::crontab::JobDef;

/// A job in the database an import may touch.
#[derive(Debug, Clone, PartialEq)]
pub struct Existing {
    pub id: i64,
    pub name: String,
    pub source: Option<String>,
    pub command: String,
    pub schedule: Option<String>,
    pub timezone: String,
    pub pool: String,
    pub run_as: Option<String>,
    pub env: Env,
    pub suspended: bool,
}

/// A job's env as the import could read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Env {
    Values(Value),
    /// The variable names only (a dry run by a role that may not read values): a change of
    /// a value alone is not seen.
    Names(Vec<String>),
}

/// What the import was asked to do.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    pub source: &'a str,
    /// Suspend the jobs gone from the file instead of deleting them.
    pub suspend_removed: bool,
    /// Take over same-named jobs that carry no source.
    pub adopt: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Remove,
    Suspend,
    Unchanged,
}

/// One job's change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub action: Action,
    /// The job's name after the import.
    pub name: String,
    /// The job (None: to be created).
    pub id: Option<i64>,
    /// The entry it is made from (None: gone from the file).
    pub entry: Option<JobDef>,
    /// Its name before, when an update renames it.
    pub was: Option<String>,
    /// The columns an update changes.
    pub fields: Vec<&'static str>,
    /// The job is suspended (and stays so: an import never resumes a job).
    pub suspended: bool,
    /// What a person recognises it by: the command, and the schedule and zone.
    pub command: String,
    pub schedule: String,
    pub timezone: String,
}

/// The changes that make the jobs of `opts.source` what `wanted` says, entries first in
/// file order, then the jobs gone from the file by name.
pub fn plan(wanted: &[JobDef], existing: &[Existing], opts: &Options) -> Result<Vec<Change>> {
    let by_name: HashMap<&str, &Existing> = existing.iter().map(|e| (e.name.as_str(), e)).collect();
    let wanted_names: HashSet<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
    let ours = |e: &Existing| match &e.source {
        Some(s) => s == opts.source,
        None => opts.adopt && wanted_names.contains(e.name.as_str()),
    };
    let foreign: Vec<&Existing> = wanted
        .iter()
        .filter_map(|w| by_name.get(w.name.as_str()).copied())
        .filter(|e| !ours(e))
        .collect();
    if let Some(first) = foreign.first() {
        bail!("{}", refusal(first, foreign.len(), opts));
    }

    let mut matched: Vec<(&JobDef, &Existing)> = Vec::new();
    let mut unmatched: Vec<&JobDef> = Vec::new();
    for w in wanted {
        match by_name.get(w.name.as_str()) {
            Some(e) => matched.push((w, e)),
            None => unmatched.push(w),
        }
    }
    let taken: HashSet<i64> = matched.iter().map(|(_, e)| e.id).collect();
    let mut left: Vec<&Existing> = existing
        .iter()
        .filter(|e| ours(e) && !taken.contains(&e.id))
        .collect();
    left.sort_by(|a, b| a.name.cmp(&b.name));
    pair(
        &mut unmatched,
        &mut left,
        &mut matched,
        |run_as, command, _, _| (run_as.map(str::to_owned), command.to_owned(), String::new()),
    );
    pair(
        &mut unmatched,
        &mut left,
        &mut matched,
        |run_as, _, schedule, zone| {
            (
                run_as.map(str::to_owned),
                schedule.to_owned(),
                zone.to_owned(),
            )
        },
    );

    let matched: HashMap<&str, &Existing> = matched
        .into_iter()
        .map(|(w, e)| (w.name.as_str(), e))
        .collect();
    let mut changes: Vec<Change> = Vec::new();
    for w in wanted {
        if let Some(e) = matched.get(w.name.as_str()) {
            changes.push(compare(w, e, opts));
        } else {
            changes.push(change(Action::Create, w, None));
        }
    }
    for e in left {
        let action = match (opts.suspend_removed, e.suspended) {
            (false, _) => Action::Remove,
            (true, false) => Action::Suspend,
            (true, true) => Action::Unchanged,
        };
        changes.push(Change {
            action,
            name: e.name.clone(),
            id: Some(e.id),
            entry: None,
            was: None,
            fields: Vec::new(),
            suspended: e.suspended,
            command: e.command.clone(),
            schedule: e.schedule.clone().unwrap_or_default(),
            timezone: e.timezone.clone(),
        });
    }
    Ok(changes)
}

/// (user, command, schedule, zone) → what two sides must share to be paired.
type Key = (Option<String>, String, String);

/// Pairs the unmatched entries and jobs whose key is unique on both sides.
fn pair<'a>(
    unmatched: &mut Vec<&'a JobDef>,
    left: &mut Vec<&'a Existing>,
    matched: &mut Vec<(&'a JobDef, &'a Existing)>,
    key: impl Fn(Option<&str>, &str, &str, &str) -> Key,
) {
    let of_entry = |w: &JobDef| key(w.run_as.as_deref(), &w.command, &w.schedule, &w.timezone);
    let of_job = |e: &Existing| {
        let schedule = e.schedule.as_deref().unwrap_or("");
        key(e.run_as.as_deref(), &e.command, schedule, &e.timezone)
    };
    let mut counts: HashMap<Key, (usize, usize)> = HashMap::new();
    for w in unmatched.iter() {
        counts.entry(of_entry(w)).or_default().0 += 1;
    }
    for e in left.iter() {
        counts.entry(of_job(e)).or_default().1 += 1;
    }
    let unique = |k: &Key| counts.get(k) == Some(&(1, 1));
    let mut paired: HashSet<i64> = HashSet::new();
    unmatched.retain(|w| {
        let k = of_entry(w);
        if !unique(&k) {
            return true;
        }
        let e = left.iter().find(|e| of_job(e) == k).expect("counted once");
        matched.push((w, e));
        paired.insert(e.id);
        false
    });
    left.retain(|e| !paired.contains(&e.id));
}

fn env_differs(existing: &Env, wanted: &Value) -> bool {
    match existing {
        Env::Values(v) => v != wanted,
        Env::Names(names) => {
            let mut mine: Vec<&str> = wanted
                .as_object()
                .map_or(Vec::new(), |m| m.keys().map(String::as_str).collect());
            mine.sort_unstable();
            // Sorted here too: the database sorts by its collation.
            let mut theirs: Vec<&str> = names.iter().map(String::as_str).collect();
            theirs.sort_unstable();
            theirs != mine
        }
    }
}

/// The update (or nothing) that makes job `e` what entry `w` says.
fn compare(w: &JobDef, e: &Existing, opts: &Options) -> Change {
    let env = Value::Object(w.env.clone());
    let mut fields = Vec::new();
    for (field, differs) in [
        ("name", e.name != w.name),
        ("command", e.command != w.command),
        (
            "schedule",
            e.schedule.as_deref() != Some(w.schedule.as_str()),
        ),
        ("timezone", e.timezone != w.timezone),
        ("pool", e.pool != w.pool),
        ("run_as", e.run_as != w.run_as),
        ("env", env_differs(&e.env, &env)),
        ("source", e.source.as_deref() != Some(opts.source)),
    ] {
        if differs {
            fields.push(field);
        }
    }
    let action = if fields.is_empty() {
        Action::Unchanged
    } else {
        Action::Update
    };
    let mut c = change(action, w, Some(e));
    c.was = (e.name != w.name).then(|| e.name.clone());
    c.fields = fields;
    c
}

fn change(action: Action, w: &JobDef, e: Option<&Existing>) -> Change {
    Change {
        action,
        name: w.name.clone(),
        id: e.map(|e| e.id),
        entry: Some(w.clone()),
        was: None,
        fields: Vec::new(),
        suspended: e.is_some_and(|e| e.suspended),
        command: w.command.clone(),
        schedule: w.schedule.clone(),
        timezone: w.timezone.clone(),
    }
}

/// Why the import is refused: `first` (and `count - 1` more) are not the source's jobs.
fn refusal(first: &Existing, count: usize, opts: &Options) -> String {
    let more = if count > 1 {
        format!(" (and {} more)", count - 1)
    } else {
        String::new()
    };
    match &first.source {
        None => format!(
            "a job named '{}'{more} already exists and was not imported from '{}' (it was made by hand, or imported before sources were recorded): rename or remove it, import with another --name-prefix, or pass --adopt to take it over; nothing was imported",
            first.name, opts.source
        ),
        Some(other) => format!(
            "the job '{}'{more} was imported from '{other}', not from '{}': import with the same --source as before, or with another --name-prefix; nothing was imported",
            first.name, opts.source
        ),
    }
}

#[cfg(test)]
mod tests;

//! The claimer: takes pending runs for this host and decides which of them start.
//!
//! Owns the claim (one `FOR UPDATE SKIP LOCKED` statement, never more runs than the free
//! capacity) and admission: the overlap rules of the job, applied under a lock on the job
//! row so that guardians deciding about the same job take turns.
//!
//! ```text
//!  pending ──claim──▶ running (claimed_at) ──admit──▶ started_at set ─▶ supervisor
//!                                   └── forbid & another started ──▶ skipped
//!                                   └── replace & another started ─▶ kill it, admit later
//!                                   └── kill requested meanwhile ──▶ killed, never started
//!                                   └── job at its max_concurrency ─▶ pending again
//! ```
//! A run counts as "running" for the overlap rules only once admitted (started_at set):
//! two runs claimed at the same moment by two guardians are then ordered by the job lock.
//! `max_concurrency` is applied under the same lock: the job's started runs are counted
//! fleet-wide and at most the free slots start, in item order ([`limit`]); the others go back
//! to `pending` (`runs_release.sql`) and are claimed again when a run of the job ends.
//! Runs that are this host's own (targeted at it, as `target = 'all'` occurrences are) of a
//! job without a cap are compared only with the job's other runs on this host, which no other
//! guardian claims: they are ordered by a lock per (host, job) instead, so the hosts of a pool
//! do not queue on the job row for their runs of one `all` occurrence.
//! Runs of jobs with `overlap = 'allow'` and no cap have nothing to order: they are admitted
//! by one statement, without a lock or a transaction. Statements are prepared once per connection.
//! A run whose kill was requested while it waited (`sisy.kill`, or replaced by a newer
//! run) never starts: admission ends it `killed` (see `runs_admit.sql` for why not
//! `cancelled`), before any overlap rule is applied to it.
//! Does not own running the process (supervisor) nor materialising runs (scheduler).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use deadpool_postgres::Pool;

use crate::db::{self, q};
use crate::run::{ClaimedRun, Overlap};

/// The job's `overlap` column.
fn parse_overlap(s: &str) -> Overlap {
    match s {
        "allow" => Overlap::Allow,
        "replace" => Overlap::Replace,
        // The table refuses other values; forbid is the careful reading of anything else.
        _ => Overlap::Forbid,
    }
}

/// What admission decided for one claimed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Start it now; started_at is set. `latency` is start − due, by the database clock.
    Start { latency: Duration },
    /// overlap = forbid: recorded `skipped`.
    Skipped,
    /// overlap = replace: kill requested for these runs; try again once they are gone.
    Wait { victims: Vec<i64> },
    /// Its kill was requested before it started: recorded `killed`, its process never ran.
    Killed,
    /// The job's max_concurrency is reached: back to `pending`, no longer this host's.
    Released,
}

pub struct Claimer {
    db: Pool,
    host: String,
    inputs: Mutex<MemberInputs>,
}

impl Claimer {
    pub fn new(db: Pool, host: String) -> Claimer {
        Claimer {
            db,
            host,
            inputs: Mutex::new(MemberInputs::default()),
        }
    }

    /// Claims up to `free` due runs of `pools` for this host.
    pub async fn claim(&self, pools: &[String], free: usize) -> Result<Vec<ClaimedRun>> {
        if free == 0 {
            return Ok(Vec::new());
        }
        let client = db::checkout(&self.db).await?;
        let rows = db::query(
            &client,
            q::RUNS_CLAIM,
            &[&self.host, &pools, &(free as i64)],
        )
        .await?;
        client.release();
        Ok(rows.iter().map(claimed_from_row).collect())
    }

    /// Applies the overlap rules to claimed runs and records the outcome. Items of a fan-out
    /// get their member's inputs here (see [`MemberInputs`]).
    pub async fn admit(&self, runs: &mut [ClaimedRun]) -> Result<HashMap<i64, Admission>> {
        let mut client = db::checkout(&self.db).await?;
        self.fill_inputs(&client, runs).await?;
        let runs: &[ClaimedRun] = runs;
        if runs
            .iter()
            .all(|r| r.overlap == Overlap::Allow && r.max_concurrency.is_none())
        {
            // Nothing to serialise: no job lock, no transaction, one statement.
            let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
            let rows = db::query(&client, q::RUNS_ADMIT, &[&ids, &self.host]).await?;
            client.release();
            return Ok(rows.iter().map(admitted_from_row).collect());
        }
        let tx = db::begin(&mut client).await?;
        // The jobs whose rules apply here, split by who else could decide about the same runs:
        // any guardian (a run of the job not targeted at this host, a cap counted fleet-wide:
        // the job row is locked) or this host only (all its runs here targeted at this host:
        // jobs_lock_for_own_admission.sql).
        let mut fleet_wide: BTreeSet<i64> = BTreeSet::new();
        let mut own: BTreeSet<i64> = BTreeSet::new();
        for r in runs
            .iter()
            .filter(|r| r.overlap != Overlap::Allow || r.max_concurrency.is_some())
        {
            let mine = r.target_host.as_deref() == Some(self.host.as_str());
            if mine && r.max_concurrency.is_none() {
                own.insert(r.job_id);
            } else {
                fleet_wide.insert(r.job_id);
            }
        }
        own.retain(|id| !fleet_wide.contains(id));
        let guarded: Vec<i64> = fleet_wide.union(&own).copied().collect();
        let mut started = Vec::new();
        // The caps as they are under the lock (a change since the claim applies now).
        let mut caps: HashMap<i64, i32> = HashMap::new();
        if !own.is_empty() {
            let own: Vec<i64> = own.into_iter().collect();
            let rows = db::query(&tx, q::JOBS_LOCK_FOR_OWN_ADMISSION, &[&own, &self.host]).await?;
            for row in rows {
                if row.get::<_, Option<i32>>(1).is_some() {
                    // Capped since the claim: the cap is counted under the job row's lock.
                    fleet_wide.insert(row.get(0));
                }
            }
        }
        if !fleet_wide.is_empty() {
            let locked: Vec<i64> = fleet_wide.into_iter().collect();
            for row in db::query(&tx, q::JOBS_LOCK_FOR_ADMISSION, &[&locked]).await? {
                if let Some(cap) = row.get::<_, Option<i32>>(1) {
                    caps.insert(row.get(0), cap);
                }
            }
        }
        if !guarded.is_empty() {
            for row in db::query(&tx, q::RUNS_RUNNING_OF_JOBS, &[&guarded]).await? {
                started.push(Started {
                    id: row.get(0),
                    job_id: row.get(1),
                    target_host: row.get(2),
                    fan_out: row.get(3),
                });
            }
        }
        // Killed while waiting: ended before any rule is applied (a killed run must neither
        // skip nor replace anything).
        let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
        let killed: HashSet<i64> = db::query(&tx, q::RUNS_KILL_UNSTARTED, &[&ids, &self.host])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let runs: Vec<ClaimedRun> = runs
            .iter()
            .filter(|r| !killed.contains(&r.id))
            .cloned()
            .collect();
        let decisions = limit(&runs, decide(&runs, &started), &started, &caps);
        let admit: Vec<i64> = decisions
            .iter()
            .filter(|(_, d)| matches!(d, Decision::Start))
            .map(|(id, _)| *id)
            .collect();
        let (skip_ids, skip_errors): (Vec<i64>, Vec<String>) = decisions
            .iter()
            .filter_map(|(id, d)| match d {
                Decision::Skip { holder } => Some((
                    *id,
                    format!(
                        "skipped: run {holder} of this job was still running (overlap = forbid)"
                    ),
                )),
                _ => None,
            })
            .unzip();
        let release: Vec<i64> = decisions
            .iter()
            .filter(|(_, d)| matches!(d, Decision::Release))
            .map(|(id, _)| *id)
            .collect();
        let rows = db::query(&tx, q::RUNS_ADMIT, &[&admit, &self.host]).await?;
        let mut result: HashMap<i64, Admission> = rows.iter().map(admitted_from_row).collect();
        result.extend(killed.into_iter().map(|id| (id, Admission::Killed)));
        if !skip_ids.is_empty() {
            db::execute(&tx, q::RUNS_SKIP, &[&skip_ids, &skip_errors, &self.host]).await?;
            for id in &skip_ids {
                result.insert(*id, Admission::Skipped);
            }
        }
        if !release.is_empty() {
            for row in db::query(&tx, q::RUNS_RELEASE, &[&release, &self.host]).await? {
                result.insert(row.get(0), Admission::Released);
            }
        }
        for (id, d) in &decisions {
            if let Decision::Replace { victims } = d {
                db::query(&tx, q::RUNS_REQUEST_REPLACE, &[victims, id]).await?;
                result.insert(
                    *id,
                    Admission::Wait {
                        victims: victims.clone(),
                    },
                );
            }
        }
        tx.commit().await?;
        client.release();
        Ok(result)
    }

    /// What this guardian read of members' inputs. Nothing panics while it is held; were the
    /// lock poisoned anyway, the cache is still whole (its entries are immutable).
    fn known_inputs(&self) -> std::sync::MutexGuard<'_, MemberInputs> {
        self.inputs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives each item its member's frozen inputs: from what this guardian already read for
    /// that member decision, else read now, once for all the items of one decision.
    async fn fill_inputs(&self, client: &db::Conn, runs: &mut [ClaimedRun]) -> Result<()> {
        let mut missing: Vec<(i64, String)> = Vec::new();
        {
            let known = self.known_inputs();
            for run in runs.iter_mut() {
                let Some(key) = decision_of(run) else {
                    continue;
                };
                match known.get(&key) {
                    Some(inputs) => run.inputs = Some(inputs.to_string()),
                    None if !missing.contains(&(key.0, key.1.clone())) => {
                        missing.push((key.0, key.1))
                    }
                    None => {}
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let (flow_runs, jobs): (Vec<i64>, Vec<String>) = missing.into_iter().unzip();
        let rows = db::query(client, q::FLOW_MEMBER_INPUTS, &[&flow_runs, &jobs]).await?;
        let mut known = self.known_inputs();
        let mut read: HashMap<(i64, String), Arc<str>> = HashMap::new();
        for row in &rows {
            let inputs: Option<String> = row.get(3);
            let inputs: Arc<str> = inputs.unwrap_or_else(|| "{}".into()).into();
            let (flow_run, job): (i64, String) = (row.get(0), row.get(1));
            known.insert((flow_run, job.clone(), row.get(2)), inputs.clone());
            read.insert((flow_run, job), inputs);
        }
        for run in runs.iter_mut() {
            if let Some((flow_run, job, _)) = decision_of(run)
                && run.inputs.is_none()
            {
                // Read now: the current decision's inputs (a rerun may have decided the
                // member again since the claim; its items of before are not run any more).
                run.inputs = read.get(&(flow_run, job)).map(|i| i.to_string());
            }
        }
        Ok(())
    }
}

/// The member decision whose inputs an item needs: (flow run, member, first attempt).
fn decision_of(run: &ClaimedRun) -> Option<(i64, String, i32)> {
    match (run.flow_run_id, run.member_decision, &run.inputs) {
        (Some(flow_run), Some(decision), None) => Some((flow_run, run.job_name.clone(), decision)),
        _ => None,
    }
}

/// The frozen inputs of the fan-out members this guardian ran items of lately, by member
/// decision: a decision's inputs never change (a rerun decides again, with a new first
/// attempt), so 10,000 items read them once per guardian instead of once each. Bounded: the
/// oldest decision read goes first.
#[derive(Default)]
struct MemberInputs {
    by_decision: HashMap<(i64, String, i32), Arc<str>>,
    order: VecDeque<(i64, String, i32)>,
}

impl MemberInputs {
    /// Member decisions kept (a fan-out's inputs are at most a few MB).
    const KEPT: usize = 16;

    fn get(&self, key: &(i64, String, i32)) -> Option<&Arc<str>> {
        self.by_decision.get(key)
    }

    fn insert(&mut self, key: (i64, String, i32), inputs: Arc<str>) {
        if self.by_decision.insert(key.clone(), inputs).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > Self::KEPT {
            if let Some(old) = self.order.pop_front() {
                self.by_decision.remove(&old);
            }
        }
    }
}

/// A row of `runs_admit.sql`: the run started, and how late, or it was killed meanwhile.
fn admitted_from_row(row: &tokio_postgres::Row) -> (i64, Admission) {
    if row.get::<_, bool>("killed") {
        return (row.get("id"), Admission::Killed);
    }
    let latency = db::secs(row.get("latency"));
    (row.get("id"), Admission::Start { latency })
}

/// Reads a claimed run. Nothing in it may panic: a value that cannot be read becomes the
/// run's `defect` (it then fails alone) and the rest of the claim goes on.
fn claimed_from_row(row: &tokio_postgres::Row) -> ClaimedRun {
    let mut defect = None;
    let max_runtime: Option<f64> = field(row, "max_runtime", &mut defect);
    let overlap: String = field(row, "overlap", &mut defect);
    ClaimedRun {
        id: row.get("id"),
        job_id: field(row, "job_id", &mut defect),
        job_name: field(row, "job_name", &mut defect),
        scheduled_for: field(row, "scheduled_for", &mut defect),
        attempt: field(row, "attempt", &mut defect),
        target_host: field(row, "target_host", &mut defect),
        due_at: field(row, "due_at", &mut defect),
        command: field(row, "command", &mut defect),
        run_as: field(row, "run_as", &mut defect),
        env: field(row, "env", &mut defect),
        workdir: field(row, "workdir", &mut defect),
        overlap: parse_overlap(&overlap),
        max_runtime: max_runtime.map(|s| db::secs(Some(s))),
        kill_grace: db::secs(field(row, "kill_grace", &mut defect)),
        flow_run_id: field(row, "flow_run_id", &mut defect),
        inputs: field(row, "inputs", &mut defect),
        item: field(row, "item", &mut defect),
        max_concurrency: field(row, "max_concurrency", &mut defect),
        item_index: field(row, "item_index", &mut defect),
        member_decision: field(row, "member_decision", &mut defect),
        defect,
    }
}

/// One column of a claimed run, or its default with the first failure kept in `defect`.
fn field<'a, T>(row: &'a tokio_postgres::Row, name: &str, defect: &mut Option<String>) -> T
where
    T: tokio_postgres::types::FromSql<'a> + Default,
{
    row.try_get(name).unwrap_or_else(|e| {
        defect.get_or_insert_with(|| {
            format!("the guardian could not read the run's {name} ({e}): for env, keep a flat JSON object of strings; for times, real dates")
        });
        T::default()
    })
}

/// A started run holding its job for the overlap rules: its id and its fan-out.
type Holder = (i64, Option<i64>);

/// A run that has started (admitted), as admission sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Started {
    pub id: i64,
    pub job_id: i64,
    pub target_host: Option<String>,
    /// For an item of a fan-out: its flow run (its sibling items are one occurrence with it).
    pub fan_out: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Start,
    Skip {
        holder: i64,
    },
    Replace {
        victims: Vec<i64>,
    },
    /// Held back by the job's max_concurrency: back to pending.
    Release,
}

/// The overlap rules, pure. Runs of an `all` job overlap only with runs for the same host.
/// Among claimed runs of one job, the earliest (by id) goes first and counts as started for
/// the rest.
pub(crate) fn decide(runs: &[ClaimedRun], started: &[Started]) -> Vec<(i64, Decision)> {
    // Per job and host: the started runs, each with its fan-out (items of one fan-out are one
    // occurrence: they never overlap each other, only runs of other occurrences).
    let mut holders: HashMap<(i64, Option<String>), Vec<Holder>> = HashMap::new();
    for s in started {
        holders
            .entry((s.job_id, s.target_host.clone()))
            .or_default()
            .push((s.id, s.fan_out));
    }
    let mut ordered: Vec<&ClaimedRun> = runs.iter().collect();
    ordered.sort_by_key(|r| r.id);
    let mut out = Vec::new();
    for run in ordered {
        let key = (run.job_id, run.target_host.clone());
        let fan_out = run.item_index.and(run.flow_run_id);
        let others: Vec<i64> = holders
            .get(&key)
            .map(|v| {
                v.iter()
                    .filter(|(id, f)| *id != run.id && (f.is_none() || *f != fan_out))
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        let decision = match run.overlap {
            Overlap::Allow => Decision::Start,
            _ if others.is_empty() => Decision::Start,
            Overlap::Forbid => Decision::Skip { holder: others[0] },
            Overlap::Replace => Decision::Replace { victims: others },
        };
        if decision == Decision::Start {
            holders.entry(key).or_default().push((run.id, fan_out));
        }
        out.push((run.id, decision));
    }
    out
}

/// max_concurrency, pure: of the runs the overlap rules start, a capped job (`caps`, read
/// under its lock) starts at most its free slots, its cap minus its started runs fleet-wide;
/// the others are released. In item order: runs that are not items (an occurrence of the
/// job itself) first, then items by `item_index`, then by id.
pub(crate) fn limit(
    runs: &[ClaimedRun],
    decisions: Vec<(i64, Decision)>,
    started: &[Started],
    caps: &HashMap<i64, i32>,
) -> Vec<(i64, Decision)> {
    let mut taken: HashMap<i64, i64> = HashMap::new();
    for s in started {
        *taken.entry(s.job_id).or_default() += 1;
    }
    let by_id: HashMap<i64, &ClaimedRun> = runs.iter().map(|r| (r.id, r)).collect();
    let mut starting: Vec<&ClaimedRun> = decisions
        .iter()
        .filter(|(_, d)| *d == Decision::Start)
        .filter_map(|(id, _)| by_id.get(id).copied())
        .filter(|r| caps.contains_key(&r.job_id))
        .collect();
    starting.sort_by_key(|r| (r.job_id, r.item_index.is_some(), r.item_index, r.id));
    let mut held = HashSet::new();
    for run in starting {
        let cap = caps.get(&run.job_id).copied().unwrap_or(i32::MAX);
        let used = taken.entry(run.job_id).or_default();
        if *used >= i64::from(cap) {
            held.insert(run.id);
        } else {
            *used += 1;
        }
    }
    decisions
        .into_iter()
        .map(|(id, d)| {
            if held.contains(&id) {
                (id, Decision::Release)
            } else {
                (id, d)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn claimed(id: i64, job_id: i64, overlap: Overlap, host: Option<&str>) -> ClaimedRun {
        ClaimedRun {
            id,
            job_id,
            job_name: format!("job{job_id}"),
            scheduled_for: Utc::now(),
            attempt: 1,
            target_host: host.map(str::to_string),
            due_at: Utc::now(),
            command: "true".into(),
            run_as: None,
            env: serde_json::json!({}),
            workdir: None,
            overlap,
            max_runtime: None,
            kill_grace: Duration::from_secs(1),
            flow_run_id: None,
            inputs: None,
            item: None,
            max_concurrency: None,
            item_index: None,
            member_decision: None,
            defect: None,
        }
    }

    fn started(id: i64, job_id: i64, host: Option<&str>) -> Started {
        Started {
            id,
            job_id,
            target_host: host.map(str::to_string),
            fan_out: None,
        }
    }

    #[test]
    fn items_of_one_fan_out_never_overlap_each_other() {
        let item = |id: i64, flow: i64| ClaimedRun {
            flow_run_id: Some(flow),
            item_index: Some(id as i32),
            ..claimed(id, 1, Overlap::Forbid, None)
        };
        let sibling = Started {
            fan_out: Some(7),
            ..started(1, 1, None)
        };
        // A sibling item runs: items of the same fan-out start, the first of another
        // fan-out (another occurrence) is skipped.
        assert_eq!(
            decide(
                &[item(2, 7), item(3, 7), item(4, 8)],
                std::slice::from_ref(&sibling)
            ),
            vec![
                (2, Decision::Start),
                (3, Decision::Start),
                (4, Decision::Skip { holder: 1 })
            ]
        );
        // An occurrence of the job outside the fan-out still holds its items back.
        assert_eq!(
            decide(&[item(2, 7)], &[started(1, 1, None)]),
            vec![(2, Decision::Skip { holder: 1 })]
        );
    }

    fn item(id: i64, job_id: i64, index: Option<i32>) -> ClaimedRun {
        ClaimedRun {
            max_concurrency: Some(1),
            item_index: index,
            ..claimed(id, job_id, Overlap::Allow, None)
        }
    }

    #[test]
    fn the_cap_starts_the_free_slots_in_item_order_and_releases_the_rest() {
        let runs = [
            item(10, 1, Some(3)),
            item(11, 1, Some(0)),
            item(12, 1, None),
            item(13, 1, Some(1)),
            item(14, 2, Some(9)),
        ];
        let caps = HashMap::from([(1, 3), (2, 1)]);
        // Job 1: one slot of three taken elsewhere; job 2: its only slot taken.
        let started = [started(5, 1, Some("b")), started(6, 2, None)];
        let mut d = limit(&runs, decide(&runs, &started), &started, &caps);
        d.sort_by_key(|(id, _)| *id);
        assert_eq!(
            d,
            vec![
                (10, Decision::Release),
                (11, Decision::Start),
                (12, Decision::Start),
                (13, Decision::Release),
                (14, Decision::Release),
            ]
        );
    }

    #[test]
    fn the_cap_leaves_uncapped_jobs_and_other_decisions_alone() {
        let runs = [
            claimed(7, 1, Overlap::Allow, None),
            ClaimedRun {
                max_concurrency: Some(5),
                ..claimed(8, 2, Overlap::Forbid, None)
            },
        ];
        let started = [started(3, 2, None)];
        let d = limit(
            &runs,
            decide(&runs, &started),
            &started,
            &HashMap::from([(2, 5)]),
        );
        assert_eq!(
            d,
            vec![(7, Decision::Start), (8, Decision::Skip { holder: 3 })]
        );
    }

    #[test]
    fn forbid_skips_while_another_run_of_the_job_has_started() {
        let d = decide(
            &[claimed(5, 1, Overlap::Forbid, None)],
            &[started(4, 1, None)],
        );
        assert_eq!(d, vec![(5, Decision::Skip { holder: 4 })]);
    }

    #[test]
    fn forbid_starts_the_earliest_of_two_claimed_together() {
        let runs = [
            claimed(8, 1, Overlap::Forbid, None),
            claimed(7, 1, Overlap::Forbid, None),
        ];
        assert_eq!(
            decide(&runs, &[]),
            vec![(7, Decision::Start), (8, Decision::Skip { holder: 7 })]
        );
    }

    #[test]
    fn all_jobs_overlap_per_host_only() {
        let runs = [claimed(9, 1, Overlap::Forbid, Some("a"))];
        assert_eq!(
            decide(&runs, &[started(3, 1, Some("b"))]),
            vec![(9, Decision::Start)]
        );
    }

    #[test]
    fn allow_always_starts_and_replace_names_its_victims() {
        let s = [started(3, 1, None)];
        assert_eq!(
            decide(&[claimed(9, 1, Overlap::Allow, None)], &s),
            vec![(9, Decision::Start)]
        );
        assert_eq!(
            decide(&[claimed(9, 1, Overlap::Replace, None)], &s),
            vec![(9, Decision::Replace { victims: vec![3] })]
        );
    }

    #[test]
    fn member_inputs_keep_the_latest_decisions_only() {
        let mut kept = MemberInputs::default();
        let key = |fr: i64, attempt: i32| (fr, "each".to_string(), attempt);
        for fr in 0..(MemberInputs::KEPT as i64 + 3) {
            kept.insert(key(fr, 1), format!("{{\"fr\": {fr}}}").into());
        }
        assert_eq!(kept.by_decision.len(), MemberInputs::KEPT);
        assert_eq!(kept.order.len(), MemberInputs::KEPT);
        assert!(kept.get(&key(0, 1)).is_none(), "the oldest went first");
        let last = MemberInputs::KEPT as i64 + 2;
        assert_eq!(
            kept.get(&key(last, 1)).map(|s| s.to_string()),
            Some(format!("{{\"fr\": {last}}}"))
        );
        // Another decision of the same member is another entry, never the first's inputs.
        assert!(kept.get(&key(last, 2)).is_none());
        // Inserting a decision again does not count it twice.
        kept.insert(key(last, 1), "{}".into());
        assert_eq!(kept.order.len(), MemberInputs::KEPT);
    }
}

//! Fan-out and fan-in (SPEC §7): a member with `foreach` runs once per item of its inputs,
//! its downstream gets the array of its items' results, decided once when the last item is
//! final. Most tests drive run states by SQL (as a guardian's writes would), so that 10,000
//! items cost milliseconds; `guardians` races real guardians and real processes over the
//! items. Every flow here is `list` → `each` (foreach over `list`'s result) → `join`.

mod control;
mod decide;
mod guardians;
mod hostile;
mod once;

use tokio_postgres::Client;

pub use crate::flows::{drive, exec, flow_state, member, open, runs_of};

/// `list` → `each` (foreach `$.list[*]`) → `join`, every command `true`.
pub const FLOW: &str =
    "INSERT INTO sisy.jobs (name, command) VALUES ('list', 'true'), ('join', 'true');
     INSERT INTO sisy.jobs (name, command, foreach) VALUES ('each', 'true', '$.list[*]');
     INSERT INTO sisy.dependencies (job, upstream) VALUES ('each', 'list'), ('join', 'each');";

/// Opens a flow run of `list` and ends `list` succeeded with `result` (JSON text, or None
/// for no result); `each` is decided by that statement. The flow run.
pub async fn start(client: &Client, result: Option<&str>) -> i64 {
    let fr = open(client, "list").await;
    drive(client, fr, "list", "succeeded", result).await;
    fr
}

/// `each`'s runs in `fr`: (item_index, item as JSON text, attempt, state), by item then
/// attempt.
pub async fn item_runs(
    client: &Client,
    fr: i64,
) -> Vec<(Option<i32>, Option<String>, i32, String)> {
    client
        .query(
            "SELECT item_index, item::text, attempt, state FROM sisy.runs
              WHERE flow_run_id = $1 AND job_name = 'each' ORDER BY item_index, attempt, id",
            &[&fr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Ends the pending runs of `each`'s items `which` (all of them if empty) in `fr`: claimed,
/// then `state`, each with the result `{"got": <its item>}`; the two statements a guardian's
/// writes would be. How many ended.
pub async fn end_items(client: &Client, fr: i64, which: &[i32], state: &str) -> u64 {
    let filter = "flow_run_id = $1 AND job_name = 'each'
                  AND (cardinality($2::int[]) = 0 OR item_index = ANY ($2::int[]))";
    let which = which.to_vec();
    client
        .execute(
            &format!(
                "UPDATE sisy.runs SET state = 'running', host = 'h', claimed_at = now(),
                        started_at = now(), heartbeat_at = now()
                  WHERE {filter} AND state = 'pending'"
            ),
            &[&fr, &which],
        )
        .await
        .unwrap();
    finish_items(client, fr, &which, state).await
}

/// Ends the running runs of `each`'s items `which` (all if empty) in `fr` with `state` and
/// the result `{"got": <its item>}`. How many ended.
pub async fn finish_items(client: &Client, fr: i64, which: &[i32], state: &str) -> u64 {
    let which = which.to_vec();
    client
        .execute(
            "UPDATE sisy.runs SET state = $3, finished_at = now(),
                    result = jsonb_build_object('got', item),
                    exit_code = CASE WHEN $3 = 'succeeded' THEN 0 WHEN $3 = 'failed' THEN 1 END
              WHERE flow_run_id = $1 AND job_name = 'each' AND state = 'running'
                AND (cardinality($2::int[]) = 0 OR item_index = ANY ($2::int[]))",
            &[&fr, &which, &state],
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "ending items {which:?} {state}: {}",
                crate::flows::message(&e)
            )
        })
}

/// `join`'s inputs in `fr` (its latest run), as JSON.
pub async fn join_inputs(client: &Client, fr: i64) -> serde_json::Value {
    let text: Option<String> = client
        .query_one(
            "SELECT inputs::text FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'join'
              ORDER BY attempt DESC, id DESC LIMIT 1",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    serde_json::from_str(&text.expect("join's run has no inputs")).unwrap()
}

/// flow_members' counts for `each` in `fr`: (items, succeeded, failed, running, pending).
pub async fn counts(client: &Client, fr: i64) -> [Option<i64>; 5] {
    let r = client
        .query_one(
            "SELECT items::bigint, items_succeeded, items_failed, items_running, items_pending
               FROM sisy.flow_members WHERE flow_run_id = $1 AND job = 'each'",
            &[&fr],
        )
        .await
        .unwrap();
    [r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)]
}

/// Ends `list`'s running run in `fr` succeeded with `result` (JSON text).
pub async fn finish_list(client: &Client, fr: i64, result: &str) {
    crate::flows::finish(client, fr, "list", "succeeded", Some(result)).await;
}

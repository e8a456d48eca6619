//! Fan-outs run by real guardians and real processes: three guardians racing on 500 items
//! (each item's process exactly once, spread over the hosts, capacity respected), items lost
//! with their guardian and retried on another, a failing item retried with its own item, a
//! cancel killing the running items' processes, what an item's process gets (`SISY_ITEM`,
//! the item as JSON), and a fan-in too large for the join's environment.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio_postgres::Client;

use super::{exec, flow_state, open, runs_of};
use crate::util::{
    Guardian, fleet, migrated_db, process_gone, processes_with_env, shared_dir, until_file,
    wait_for, wait_until,
};

const LONG: Duration = Duration::from_secs(120);

/// Waits until flow run `fr` has ended; its state.
async fn ended(client: &Client, fr: i64) -> String {
    wait_until(
        client,
        &format!("flow run {fr} to end"),
        LONG,
        || format!("SELECT state FROM sisy.flow_runs WHERE id = {fr}"),
        |s: String| s != "running",
    )
    .await
}

/// Kills what is left of the jobs tagged `tag`.
fn reap(tag: &str) {
    for (pid, _) in processes_with_env("FAN_TAG", tag) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `list` (whose command writes `list_result` as its result) → `each` (foreach `$.list[*]`,
/// command `each`) → `join`; every job tagged `FAN_TAG=tag`.
async fn flow(client: &Client, tag: &str, list_result: &str, each: &str) {
    let env = format!("{{\"FAN_TAG\": \"{tag}\"}}");
    let list = format!("printf '%s' '{list_result}' > \"$SISY_RESULT\"");
    client
        .execute(
            "INSERT INTO sisy.jobs (name, command, env, foreach) VALUES
                ('list', $1, $4::text::jsonb, NULL), ('each', $2, $4::text::jsonb, '$.list[*]'),
                ('join', $3, $4::text::jsonb, NULL)",
            &[&list, &each, &"true", &env],
        )
        .await
        .unwrap();
    exec(
        client,
        "INSERT INTO sisy.dependencies (job, upstream) VALUES ('each', 'list'), ('join', 'each')",
    )
    .await;
}

/// The most item processes alive at once on one host, per host, from the processes' own
/// log (`S <ns> <run id>` when one starts, `E <ns> <run id>` as it ends) and the hosts of
/// those runs. A process lives inside its slot, so more than the capacity here is a breach
/// for sure (the runs' times in the table are written later, in batches: not a measure).
async fn most_at_once(client: &Client, log: &str) -> BTreeMap<String, usize> {
    let ids: Vec<i64> = log
        .lines()
        .map(|l| l.split(' ').nth(2).unwrap().parse().unwrap())
        .collect();
    let hosts: BTreeMap<i64, String> = client
        .query(
            "SELECT id, host FROM sisy.runs WHERE id = ANY ($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut events: BTreeMap<String, Vec<(u128, i32)>> = BTreeMap::new();
    for line in log.lines() {
        let mut f = line.split(' ');
        let (kind, at, id) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let host = hosts[&id.parse::<i64>().unwrap()].clone();
        // An end sorts before a start at the same instant.
        let d = if kind == "S" { 1 } else { -1 };
        events
            .entry(host)
            .or_default()
            .push((at.parse().unwrap(), d));
    }
    events
        .into_iter()
        .map(|(host, mut e)| {
            e.sort();
            let (mut now, mut most) = (0, 0);
            for (_, d) in e {
                now += d;
                most = most.max(now);
            }
            (host, most as usize)
        })
        .collect()
}

/// Three guardians race on 500 items of a job with the default `overlap` (forbid): the
/// items of one fan-out are one occurrence, not overlapping runs of the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_guardians_racing_on_500_items_of_a_job_with_default_overlap() {
    race("").await;
}

/// As above with `overlap = 'allow'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_guardians_racing_on_500_items_run_each_exactly_once() {
    race("UPDATE sisy.jobs SET overlap = 'allow' WHERE name = 'each'").await;
}

/// Three guardians race on 500 items of a command that logs its run id: every item's
/// process runs exactly once, none missing, each succeeded; the items spread over the three
/// hosts, and no host runs more at once than its capacity. `setup`: SQL run before.
async fn race(setup: &str) {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let log = dir.path().join("items.log");
    let tag = format!("race-{}", db.name);
    let list: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    let times = dir.path().join("times.log");
    // The item as the process got it, then its own life (a short sleep so that processes
    // overlap and capacity is tested).
    let each = format!(
        "echo \"$SISY_RUN_ID $SISY_ITEM\" >> {log}; echo \"S $(date +%s%N) $SISY_RUN_ID\" >> {times};
         sleep 0.05; echo \"E $(date +%s%N) $SISY_RUN_ID\" >> {times}",
        log = log.display(),
        times = times.display()
    );
    flow(&client, &tag, &format!("[{}]", list.join(",")), &each).await;
    exec(&client, setup).await;
    let _fleet = fleet(&db, &client, 3, "capacity = 4").await;
    let fr = open(&client, "list").await;
    assert_eq!(ended(&client, fr).await, "succeeded");
    let states = client
        .query(
            "SELECT state, count(*) FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'each'
              GROUP BY state ORDER BY state",
            &[&fr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    assert_eq!(states, vec![("succeeded".to_string(), 500)]);
    assert_eq!(runs_of(&client, fr, "join").await, 1);
    // The log: one line per process, its run id and its SISY_ITEM.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(i64, i32)> = text
        .lines()
        .map(|l| {
            let (id, item) = l.split_once(' ').unwrap();
            (id.parse().unwrap(), item.parse().unwrap_or(-1))
        })
        .collect();
    assert_eq!(lines.len(), 500, "{} processes for 500 items", lines.len());
    let ids: BTreeSet<i64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(ids.len(), 500, "a run's process ran twice");
    let mut seen: Vec<i32> = lines.iter().map(|l| l.1).collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..500).collect::<Vec<i32>>(),
        "items missing or twice"
    );
    // Each process's SISY_ITEM is its run's item.
    let ids: Vec<i64> = ids.into_iter().collect();
    let by_db: BTreeMap<i64, i32> = client
        .query(
            "SELECT id, item_index FROM sisy.runs WHERE id = ANY ($1) AND flow_run_id = $2
                AND job_name = 'each' AND item = to_jsonb(item_index)",
            &[&ids, &fr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(lines.iter().all(|(id, item)| by_db.get(id) == Some(item)));
    let most = most_at_once(&client, &std::fs::read_to_string(&times).unwrap()).await;
    assert_eq!(
        most.len(),
        3,
        "the items did not spread over the three hosts: {most:?}"
    );
    assert!(
        most.values().all(|&n| n <= 4),
        "capacity 4 exceeded: {most:?}"
    );
    let per_host = client
        .query(
            "SELECT host, count(*) FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'each'
              GROUP BY host ORDER BY host",
            &[&fr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    eprintln!("500 items per host: {per_host:?}; most at once: {most:?}");
    reap(&tag);
}

/// Items lost with their guardian (SIGKILL) are retried on another, each as its own next
/// attempt with its item; the join waits for those retries and runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_lost_with_their_guardian_are_retried_on_another() {
    let (db, client) = migrated_db().await;
    let dir = shared_dir();
    let flag = dir.path().join("go");
    let tag = format!("lost-{}", db.name);
    flow(
        &client,
        &tag,
        "[\"a\", \"b\", \"c\", \"d\"]",
        &until_file(&flag),
    )
    .await;
    exec(
        &client,
        "UPDATE sisy.jobs SET max_retries = 1, retry_delay = '0', overlap = 'allow' WHERE name = 'each'",
    )
    .await;
    // g1 alone, two slots: two items run on it, two wait.
    let mut g1 = Guardian::start(&db, "g1", "capacity = 2");
    let fr = open(&client, "list").await;
    wait_until(
        &client,
        "two items to run on g1",
        LONG,
        || {
            format!(
                "SELECT count(*) FROM sisy.runs WHERE flow_run_id = {fr} AND job_name = 'each'
                    AND state = 'running' AND pid IS NOT NULL AND host = 'g1'"
            )
        },
        |n: i64| n == 2,
    )
    .await;
    g1.kill();
    let _g2 = Guardian::start(&db, "g2", "capacity = 4");
    wait_until(
        &client,
        "g1's two items to be declared lost",
        LONG,
        || format!("SELECT count(*) FROM sisy.runs WHERE flow_run_id = {fr} AND state = 'lost'"),
        |n: i64| n == 2,
    )
    .await;
    // The retries run; the join is not decided meanwhile.
    wait_until(
        &client,
        "the two retries and the two waiting items to run on g2",
        LONG,
        || {
            format!(
                "SELECT count(*) FROM sisy.runs WHERE flow_run_id = {fr} AND job_name = 'each'
                    AND state = 'running' AND pid IS NOT NULL AND host = 'g2'"
            )
        },
        |n: i64| n == 4,
    )
    .await;
    assert_eq!(runs_of(&client, fr, "join").await, 0);
    std::fs::write(&flag, "").unwrap();
    assert_eq!(ended(&client, fr).await, "succeeded");
    assert_eq!(runs_of(&client, fr, "join").await, 1);
    // Each lost item's retry is its attempt 2, with its own item; no other item retried.
    let retried = client
        .query(
            "SELECT l.item_index, r.item::text = l.item::text, r.state FROM sisy.runs l
               JOIN sisy.runs r ON r.flow_run_id = l.flow_run_id AND r.job_name = 'each'
                AND r.item_index = l.item_index AND r.attempt = 2
              WHERE l.flow_run_id = $1 AND l.state = 'lost' ORDER BY 1",
            &[&fr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, bool>(1), r.get::<_, String>(2)))
        .collect::<Vec<_>>();
    assert_eq!(retried, vec![(true, "succeeded".to_string()); 2]);
    assert_eq!(runs_of(&client, fr, "each").await, 6);
    reap(&tag);
}

/// A cancel in the middle of a fan-out: the running items' processes are killed (gone), the
/// pending items cancelled, nothing retried, the join never decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_running_items_processes_and_cancels_the_pending_ones() {
    let (db, client) = migrated_db().await;
    let tag = format!("cancel-{}", db.name);
    flow(&client, &tag, "[1, 2, 3, 4, 5]", "sleep 600").await;
    exec(
        &client,
        "UPDATE sisy.jobs SET max_retries = 3, retry_delay = '0', overlap = 'allow' WHERE name = 'each'",
    )
    .await;
    let _g = Guardian::start(&db, "g1", "capacity = 2");
    let fr = open(&client, "list").await;
    wait_until(
        &client,
        "two items to run",
        LONG,
        || {
            format!(
                "SELECT count(*) FROM sisy.runs WHERE flow_run_id = {fr} AND job_name = 'each'
                    AND state = 'running' AND pid IS NOT NULL"
            )
        },
        |n: i64| n == 2,
    )
    .await;
    // Each item's shell and its sleep.
    let procs = processes_with_env("FAN_TAG", &tag);
    let runs: BTreeSet<Option<i64>> = procs.iter().map(|(_, run)| *run).collect();
    assert_eq!(runs.len(), 2, "{procs:?}");
    let pids: Vec<i32> = procs.into_iter().map(|(pid, _)| pid).collect();
    exec(&client, &format!("SELECT sisy.cancel_flow({fr})")).await;
    assert_eq!(flow_state(&client, fr).await, "cancelled");
    wait_until(
        &client,
        "the running items to be killed",
        LONG,
        || {
            format!(
                "SELECT count(*) FROM sisy.runs WHERE flow_run_id = {fr} AND job_name = 'each'
                    AND state = 'killed'"
            )
        },
        |n: i64| n == 2,
    )
    .await;
    for pid in pids {
        wait_for("a killed item's process to be gone", LONG, || {
            process_gone(pid)
        })
        .await;
    }
    let states = client
        .query(
            "SELECT state, count(*) FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'each'
              GROUP BY state ORDER BY state",
            &[&fr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    assert_eq!(states, vec![("cancelled".into(), 3), ("killed".into(), 2)]);
    assert_eq!(runs_of(&client, fr, "join").await, 0);
    reap(&tag);
}

/// What an item's process gets: `SISY_ITEM`, its item as JSON (unicode, quotes, objects,
/// null), and `SISY_INPUTS`, the member's inputs. The job writes both back as its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_items_process_gets_its_item_as_json_and_the_members_inputs() {
    let (db, client) = migrated_db().await;
    let tag = format!("item-{}", db.name);
    let list = serde_json::json!([
        "日本語 🦀", "with \"quotes\" and \\ and $HOME and `x`", {"a": [1, null]}, null, 3.5
    ]);
    // The list's JSON has single quotes nowhere: it goes into the root's command as is.
    let text = list.to_string();
    assert!(!text.contains('\''));
    flow(
        &client,
        &tag,
        &text,
        r#"printf '{"item": %s, "inputs": %s}' "$SISY_ITEM" "$SISY_INPUTS" > "$SISY_RESULT""#,
    )
    .await;
    exec(
        &client,
        "UPDATE sisy.jobs SET overlap = 'allow' WHERE name = 'each'",
    )
    .await;
    let _g = Guardian::start(&db, "g1", "capacity = 4");
    let fr = open(&client, "list").await;
    assert_eq!(ended(&client, fr).await, "succeeded");
    let rows = client
        .query(
            "SELECT item_index, result FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'each'
              ORDER BY item_index",
            &[&fr],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    for r in rows {
        let i: i32 = r.get(0);
        let result: Option<serde_json::Value> = r.get(1);
        let want = serde_json::json!({ "item": list[i as usize], "inputs": { "list": list } });
        assert_eq!(result, Some(want), "item {i}");
    }
    reap(&tag);
}

/// A guardian reads a fan-out member's inputs once per decision of the member, not with each
/// item: the items of a rerun from upstream, run by the same guardian process, get the new
/// decision's inputs, never the ones it read for the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_of_a_rerun_from_upstream_get_the_new_inputs_from_the_same_guardian() {
    let (db, client) = migrated_db().await;
    let tag = format!("reread-{}", db.name);
    let dir = shared_dir();
    let list = dir.path().join("list.json");
    std::fs::write(&list, "[1, 2, 3]").unwrap();
    flow(
        &client,
        &tag,
        "[]",
        r#"printf '%s' "$SISY_INPUTS" > "$SISY_RESULT""#,
    )
    .await;
    exec(
        &client,
        &format!(
            "UPDATE sisy.jobs SET command = 'cat {} > \"$SISY_RESULT\"' WHERE name = 'list';
             UPDATE sisy.jobs SET overlap = 'allow' WHERE name = 'each'",
            list.display()
        ),
    )
    .await;
    let _g = Guardian::start(&db, "g1", "capacity = 4");
    let fr = open(&client, "list").await;
    assert_eq!(ended(&client, fr).await, "succeeded");
    std::fs::write(&list, "[4, 5]").unwrap();
    client
        .query_one("SELECT sisy.rerun_flow($1, 'list')", &[&fr])
        .await
        .unwrap();
    assert_eq!(ended(&client, fr).await, "succeeded");
    let seen: Vec<(i32, Option<serde_json::Value>)> = client
        .query(
            "SELECT attempt, result FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'each'
              ORDER BY attempt, item_index",
            &[&fr],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let first = Some(serde_json::json!({"list": [1, 2, 3]}));
    let second = Some(serde_json::json!({"list": [4, 5]}));
    assert_eq!(
        seen,
        [
            (1, first.clone()),
            (1, first.clone()),
            (1, first),
            (2, second.clone()),
            (2, second)
        ],
        "items and their SISY_INPUTS, by attempt"
    );
    reap(&tag);
}

/// The fan-in of 10,000 small results (`{"got": i}`, 150 KB together): more than Linux
/// lets one environment variable carry, so the join cannot be handed its SISY_INPUTS. It
/// fails at once with an error that says so (no hang, no panic, no silent drop), and the
/// flow run ends. The items are driven by SQL; a real guardian runs the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_in_too_large_for_the_environment_fails_the_join_saying_so() {
    let (db, client) = migrated_db().await;
    exec(&client, super::FLOW).await;
    let list: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let fr = super::start(&client, Some(&format!("[{}]", list.join(",")))).await;
    assert_eq!(
        super::end_items(&client, fr, &[], "succeeded").await,
        10_000
    );
    let _g = Guardian::start(&db, "g1", "");
    let state = ended(&client, fr).await;
    let (join, error) = super::member(&client, fr, "join").await;
    assert_eq!(
        (join.as_str(), state.as_str()),
        ("failed", "failed"),
        "{error}"
    );
    assert!(
        error.contains("SISY_INPUTS") && error.contains("bytes"),
        "{error}"
    );
}

/// An item that fails on its first attempt is retried by a real guardian with its own item
/// (SISY_ITEM and SISY_ATTEMPT of the retry); the other items run once; the join gets every
/// item's result from its last attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_item_is_retried_with_its_own_item() {
    let (db, client) = migrated_db().await;
    let tag = format!("retry-{}", db.name);
    // Item 2 fails on its first attempt; every attempt writes "<item>/<attempt>".
    let each = r#"printf '"%s/%s"' "$SISY_ITEM" "$SISY_ATTEMPT" > "$SISY_RESULT"; [ "$SISY_ITEM" != 2 ] || [ "$SISY_ATTEMPT" -ge 2 ]"#;
    flow(&client, &tag, "[1, 2, 3]", each).await;
    exec(
        &client,
        "UPDATE sisy.jobs SET max_retries = 1, retry_delay = '0', overlap = 'allow' WHERE name = 'each'",
    )
    .await;
    let _fleet = fleet(&db, &client, 2, "capacity = 2").await;
    let fr = open(&client, "list").await;
    assert_eq!(ended(&client, fr).await, "succeeded");
    assert_eq!(runs_of(&client, fr, "each").await, 4);
    let inputs: Option<serde_json::Value> = client
        .query_one(
            "SELECT inputs FROM sisy.runs WHERE flow_run_id = $1 AND job_name = 'join'",
            &[&fr],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        inputs,
        Some(serde_json::json!({ "each": ["1/1", "2/2", "3/1"] }))
    );
    reap(&tag);
}

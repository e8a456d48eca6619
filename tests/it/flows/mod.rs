//! Flows (SPEC §7) against a real database: the decision rules cell by cell, the refused
//! definitions, cancel, rerun, timeouts, the views and events, and the races that the lock on
//! the flow run exists for, with real guardians and real processes where it matters. Tests
//! that only need the decision logic drive run states by SQL (a run `pending`, then
//! `running`, then final), as a guardian's writes would; this module holds their helpers.

mod control;
mod definitions;
mod guardians;
mod guardians_control;
mod hostile;
mod locks;
mod rules;
mod schedule;
mod targets;
mod tend;

use tokio_postgres::Client;

/// Runs `sql`, panicking with the database's message if it fails.
pub async fn exec(client: &Client, sql: &str) {
    if let Err(e) = client.batch_execute(sql).await {
        panic!("{sql}\nfailed: {}", message(&e));
    }
}

/// The message of a database error (the text a user sees).
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Runs `sql`, which must fail; returns the database's message.
pub async fn refused(client: &Client, sql: &str) -> String {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("{sql}\nwas accepted; it should have been refused"),
        Err(e) => message(&e),
    }
}

/// The flow run a run belongs to.
pub async fn flow_of(client: &Client, run: i64) -> i64 {
    client
        .query_one("SELECT flow_run_id FROM sisy.runs WHERE id = $1", &[&run])
        .await
        .unwrap()
        .get::<_, Option<i64>>(0)
        .unwrap_or_else(|| panic!("run {run} belongs to no flow run"))
}

/// Triggers `root` and returns the flow run it opened.
pub async fn open(client: &Client, root: &str) -> i64 {
    let run = crate::util::trigger(client, root).await;
    flow_of(client, run).await
}

/// The state and error of `job`'s latest run in flow run `fr` ("none" if it has none).
pub async fn member(client: &Client, fr: i64, job: &str) -> (String, String) {
    let row = client
        .query_opt(
            "SELECT state, coalesce(error, '') FROM sisy.runs
              WHERE flow_run_id = $1 AND job_name = $2 ORDER BY attempt DESC, id DESC LIMIT 1",
            &[&fr, &job],
        )
        .await
        .unwrap();
    row.map(|r| (r.get(0), r.get(1)))
        .unwrap_or(("none".into(), String::new()))
}

/// How many runs `job` has in flow run `fr`.
pub async fn runs_of(client: &Client, fr: i64, job: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM sisy.runs WHERE flow_run_id = $1 AND job_name = $2",
            &[&fr, &job],
        )
        .await
        .unwrap()
        .get(0)
}

/// The state of flow run `fr`.
pub async fn flow_state(client: &Client, fr: i64) -> String {
    client
        .query_one("SELECT state FROM sisy.flow_runs WHERE id = $1", &[&fr])
        .await
        .unwrap()
        .get(0)
}

/// Drives `job`'s pending run(s) in flow run `fr` as a guardian would: claimed (`running`),
/// then `state` with `result`. Panics if it has no pending run.
pub async fn drive(client: &Client, fr: i64, job: &str, state: &str, result: Option<&str>) {
    let started = client
        .execute(
            "UPDATE sisy.runs SET state = 'running', host = coalesce(target_host, 'h'),
                    claimed_at = now(), started_at = now(), heartbeat_at = now()
              WHERE flow_run_id = $1 AND job_name = $2 AND state = 'pending'",
            &[&fr, &job],
        )
        .await
        .unwrap();
    assert!(started > 0, "{job} has no pending run in flow run {fr}");
    finish(client, fr, job, state, result).await;
}

/// Ends `job`'s running run(s) in flow run `fr` with `state` and `result`.
pub async fn finish(client: &Client, fr: i64, job: &str, state: &str, result: Option<&str>) {
    let ended = client
        .execute(
            "UPDATE sisy.runs SET state = $3, finished_at = now(), result = $4::text::jsonb,
                    exit_code = CASE WHEN $3 = 'succeeded' THEN 0 WHEN $3 = 'failed' THEN 1 END
              WHERE flow_run_id = $1 AND job_name = $2 AND state = 'running'",
            &[&fr, &job, &state, &result],
        )
        .await;
    match ended {
        Ok(n) => assert!(n > 0, "{job} has no running run in flow run {fr}"),
        Err(e) => panic!("finishing {job} {state} failed: {}", message(&e)),
    }
}

/// Runs `sql`, then COMMIT (ROLLBACK on an error), on `session`, already in a transaction, in
/// a task of its own: the second of two sessions racing, which may have to wait for the first.
pub fn in_second_session(
    session: Client,
    sql: String,
) -> tokio::task::JoinHandle<(Result<(), String>, Client)> {
    tokio::spawn(async move {
        let r = match session.batch_execute(&sql).await {
            Ok(()) => session
                .batch_execute("COMMIT")
                .await
                .map_err(|e| message(&e)),
            Err(e) => {
                session.batch_execute("ROLLBACK").await.unwrap();
                Err(message(&e))
            }
        };
        (r, session)
    })
}

/// The backend process id of `client`'s session.
pub async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until the backend `pid` waits on a lock, or `task` has finished (it did not have to
/// wait): the event to wait for before letting the holder of the lock go.
pub async fn blocked_or_done<T>(client: &Client, pid: i32, task: &tokio::task::JoinHandle<T>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: bool = client
            .query_one(
                "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if waiting || task.is_finished() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backend {pid} neither waited on a lock nor finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

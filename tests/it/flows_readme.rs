//! The README's "Flows" example, run for real: its statements create the flow as written,
//! a real guardian runs it (commands swapped for ones this machine has), once with every
//! step succeeding and once with a transform failing, and the README's watching queries run
//! against the flow runs it made.

use std::time::Duration;

use crate::util::{Guardian, migrated_db, trigger, wait_until};

const LONG: Duration = Duration::from_secs(60);

/// The `n`th ```sql block of the README's Flows section.
fn readme_sql(n: usize) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Flows: jobs that run after other jobs")
        .nth(1)
        .expect("the README has a Flows section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sql")
        .nth(n)
        .unwrap_or_else(|| panic!("the Flows section has no sql block {n}"))
        .split("```")
        .next()
        .unwrap()
        .to_string()
}

async fn finished_flow(client: &tokio_postgres::Client, id: i64) -> String {
    wait_until(
        client,
        &format!("flow run {id} to end"),
        LONG,
        || format!("SELECT state FROM sisy.flow_runs WHERE id = {id}"),
        |s: String| s != "running",
    )
    .await
}

async fn member_states(client: &tokio_postgres::Client, id: i64) -> Vec<(String, String)> {
    client
        .query(
            "SELECT job, state FROM sisy.flow_members WHERE flow_run_id = $1 ORDER BY job",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn states(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_flow_runs_as_described() {
    let (db, client) = migrated_db().await;
    client.batch_execute(&readme_sql(1)).await.unwrap();
    // The example's commands live on an ETL host; here every step is `true`, and the root
    // writes the result the README's condition reads.
    client
        .batch_execute(
            "UPDATE sisy.jobs SET command = 'true';
             UPDATE sisy.jobs SET command = 'echo ''{\"rows\": 3}'' > \"$SISY_RESULT\"' WHERE name = 'import'",
        )
        .await
        .unwrap();
    client.batch_execute(&readme_sql(2)).await.unwrap();
    let _g = Guardian::start(&db, "etl", "");

    let root = trigger(&client, "import").await;
    let first: i64 = client
        .query_one("SELECT flow_run_id FROM sisy.runs WHERE id = $1", &[&root])
        .await
        .unwrap()
        .get(0);
    assert_eq!(finished_flow(&client, first).await, "succeeded");
    assert_eq!(
        member_states(&client, first).await,
        states(&[
            ("cleanup", "succeeded"),
            ("import", "succeeded"),
            ("notify_failure", "skipped"),
            ("report", "succeeded"),
            ("transform_sales", "succeeded"),
            ("transform_stock", "succeeded"),
        ])
    );

    // A transform fails: the report does not run, the fallback and the cleanup do, and the
    // flow run is failed (the fallback does not clear the failure it handled).
    client
        .execute(
            "UPDATE sisy.jobs SET command = 'exit 3' WHERE name = 'transform_stock'",
            &[],
        )
        .await
        .unwrap();
    let root = trigger(&client, "import").await;
    let second: i64 = client
        .query_one("SELECT flow_run_id FROM sisy.runs WHERE id = $1", &[&root])
        .await
        .unwrap()
        .get(0);
    assert_eq!(finished_flow(&client, second).await, "failed");
    assert_eq!(
        member_states(&client, second).await,
        states(&[
            ("cleanup", "succeeded"),
            ("import", "succeeded"),
            ("notify_failure", "succeeded"),
            ("report", "upstream_failed"),
            ("transform_sales", "succeeded"),
            ("transform_stock", "failed"),
        ])
    );
    let row = client
        .query_one(
            "SELECT failed_members, error FROM sisy.flow_status WHERE id = $1",
            &[&second],
        )
        .await
        .unwrap();
    let failed: Vec<String> = row.get(0);
    assert_eq!(failed, vec!["report", "transform_stock"]);

    // The watching queries, on the failed flow run; then the rerun statements of the README
    // (the flow runs again: its failed transform now succeeds).
    let watch = readme_sql(3);
    let statements: Vec<String> = watch
        .split(';')
        .map(str::trim)
        .filter(|s| s.contains("SELECT"))
        .map(|s| s.replace("42", &second.to_string()))
        .collect();
    client
        .execute(
            "UPDATE sisy.jobs SET command = 'true' WHERE name = 'transform_stock'",
            &[],
        )
        .await
        .unwrap();
    for sql in statements.iter().filter(|s| !s.contains("cancel_flow")) {
        let sql = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if sql.contains("rerun_flow") {
            // The second rerun waits for the first to end: a running flow run is refused.
            finished_flow(&client, second).await;
        }
        client
            .query(sql.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("README statement failed: {sql}: {e}"));
    }
    assert_eq!(finished_flow(&client, second).await, "succeeded");
}

//! The web scenario's database: 100,000 jobs, about a million runs, 200 hosts and 1,000 flow
//! runs, shaped like a fleet's week, loaded with set-based statements. Does not own the
//! measuring (`web.rs`).
//!
//! - Hosts `node-001`…`node-200`: 181–200 serve the pool `batch`, the rest `default`; every
//!   20th from 7 is dead (its lease passed hours ago), every 40th from 13 draining; the live
//!   ones' leases run for an hour (nobody renews them). `node-179`
//!   gets a few hundred runs, `node-180` none (the figures name them).
//! - Jobs `job<i>-<task>`: `*/5 * * * *` (200 jobs, 900 runs each: the last 75 hours), hourly
//!   (1,000, 180 runs each), the rest daily at their own time (runs of the last 7 days); a
//!   tenth in Europe/Amsterdam, a tenth in America/New_York, some in Asia/Tokyo; 2 %
//!   suspended, 0.1 % with a `schedule_error` (and no runs), a third with env values, 5 % in
//!   the pool `batch`. With the flow jobs, exactly [`JOBS`].
//! - Runs of the occurrences of those schedules, inserted in time order (ids follow
//!   `scheduled_for`, as the scheduler makes them) without row triggers, each with its
//!   output: a few hundred bytes of a backup's, a log rotation's, a mirror sync's (ANSI
//!   colours), JSON log lines, a report…; a tenth empty; one in a thousand 32 kB; none while
//!   running (a guardian records the output when the run ends). States:
//!   about 3 % failed (one job in 200 fails every other run), 0.2 % timed out, 0.1 % lost
//!   (on dead hosts), 0.1 % killed, 1 % expired (`missed_count` 1–7), 0.5 % skipped, a few
//!   cancelled; the newest 300 running on live hosts, the newest 120 pending.
//! - Five flows (an ETL of 8 members, a deploy pipeline of 10 with a `one_failed` rollback,
//!   an ML chain of 6, a reindex of 16 shards and a merge, a billing chain of 5), each root
//!   hourly for 200 hours: 1,000 flow runs opened by the real triggers (a root's run
//!   inserted), moved on by the real engine (their members' runs ended round by round, 2 %
//!   failing); the newest of each root stays running. They go in first, so their runs have
//!   the lowest ids.
//!
//! Then `VACUUM ANALYZE`, which autovacuum would do next.

use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::harness::{self, Db, progress, round};

pub const JOBS: i64 = 100_000;
/// Flow runs per root: one an hour.
const FLOW_HOURS: i32 = 200;

/// A flow's edges: (job, upstream, the job's trigger_rule).
type Edges = Vec<(String, String, &'static str)>;

/// The flows: (root, its edges).
fn flows() -> Vec<(String, Edges)> {
    let chain = |root: &str, steps: &[&str]| {
        let mut names = vec![root.to_string()];
        names.extend(steps.iter().map(|s| format!("{root}-{s}")));
        names
            .windows(2)
            .map(|w| (w[1].clone(), w[0].clone(), "all_success"))
            .collect::<Vec<_>>()
    };
    let edge = |job: &str, up: &str, rule| (job.to_string(), up.to_string(), rule);
    let mut etl = Vec::new();
    for source in ["orders", "customers", "events"] {
        let extract = format!("flow-etl-extract-{source}");
        etl.push(edge(&extract, "flow-etl", "all_success"));
        etl.push(edge("flow-etl-transform", &extract, "all_success"));
    }
    etl.extend([
        edge("flow-etl-load", "flow-etl-transform", "all_success"),
        edge("flow-etl-report", "flow-etl-load", "all_success"),
        edge("flow-etl-notify", "flow-etl-load", "all_done"),
    ]);
    let mut deploy = vec![edge("flow-deploy-build", "flow-deploy", "all_success")];
    for check in ["test-unit", "test-integration", "lint"] {
        let job = format!("flow-deploy-{check}");
        deploy.push(edge(&job, "flow-deploy-build", "all_success"));
        deploy.push(edge("flow-deploy-package", &job, "all_success"));
    }
    deploy.extend([
        edge("flow-deploy-staging", "flow-deploy-package", "all_success"),
        edge("flow-deploy-smoke", "flow-deploy-staging", "all_success"),
        edge("flow-deploy-production", "flow-deploy-smoke", "all_success"),
        edge("flow-deploy-rollback", "flow-deploy-smoke", "one_failed"),
    ]);
    let mut reindex = Vec::new();
    for s in 1..=16 {
        let shard = format!("flow-reindex-shard-{s:02}");
        reindex.push(edge(&shard, "flow-reindex", "all_success"));
        reindex.push(edge("flow-reindex-merge", &shard, "all_success"));
    }
    vec![
        ("flow-etl".into(), etl),
        ("flow-deploy".into(), deploy),
        (
            "flow-ml".into(),
            chain(
                "flow-ml",
                &["fetch", "features", "train", "evaluate", "publish"],
            ),
        ),
        ("flow-reindex".into(), reindex),
        (
            "flow-billing".into(),
            chain("flow-billing", &["close", "invoice", "send", "archive"]),
        ),
    ]
}

/// Loads everything on a connection of its own (temporary tables and session settings) and
/// returns what it loaded and how long each step took.
pub async fn populate(db: &Db) -> Result<Value> {
    let c = harness::connect(&db.test.url).await?;
    // The runs are sorted and shaped in memory; JIT compiles the big statements for longer
    // than it saves.
    c.batch_execute("SET work_mem = '256MB'; SET jit = off")
        .await?;
    let began = Instant::now();
    let mut steps = serde_json::Map::new();
    let mut step = |name: &str, at: Instant| {
        let s = round(at.elapsed().as_secs_f64(), 1);
        progress(&format!("web: {name} in {s} s"));
        steps.insert(name.to_string(), json!(s));
    };

    let t = Instant::now();
    c.batch_execute(HOSTS).await?;
    step("hosts", t);

    let t = Instant::now();
    let flow_jobs = add_flow_jobs(&c).await?;
    c.execute(JOBS_SQL, &[&(JOBS - flow_jobs)]).await?;
    step("jobs", t);

    let t = Instant::now();
    let rounds = run_flows(&c).await?;
    step("flows", t);

    let t = Instant::now();
    c.batch_execute(OCCURRENCES).await?;
    step("occurrences", t);
    let t = Instant::now();
    // No row triggers for the history: a week-old state change has nobody to notify, and
    // these runs open no flow run (no flow job is among them).
    c.batch_execute("SET session_replication_role = replica")
        .await?;
    let runs = c.execute(RUNS, &[]).await?;
    c.batch_execute("SET session_replication_role = DEFAULT; DROP TABLE occurrences")
        .await?;
    step("runs", t);

    let t = Instant::now();
    c.batch_execute(HOSTS_RUNNING).await?;
    c.batch_execute("VACUUM ANALYZE").await?;
    step("vacuum_analyze", t);
    let seconds = round(began.elapsed().as_secs_f64(), 1);
    progress(&format!("web: populated in {seconds} s"));

    Ok(json!({
        "seconds": seconds,
        "steps_s": steps,
        "runs_inserted_in_time_order": runs,
        "flow_rounds": rounds,
        "loaded": counts(&c).await?,
    }))
}

/// The flow jobs and their edges; returns how many jobs.
async fn add_flow_jobs(c: &Client) -> Result<i64> {
    let mut roots = Vec::new();
    let mut names = Vec::new();
    let mut rules = Vec::new();
    let (mut jobs, mut ups) = (Vec::new(), Vec::new());
    for (root, edges) in flows() {
        roots.push(root);
        for (job, up, rule) in edges {
            if !names.contains(&job) {
                names.push(job.clone());
                rules.push(rule.to_string());
            }
            jobs.push(job);
            ups.push(up);
        }
    }
    // Roots hourly, each at its own minute (5, 15, …).
    c.execute(
        "INSERT INTO sisy.jobs (name, command, schedule, overlap, flow_timeout)
         SELECT r, format('/usr/local/bin/%s', r), format('%s * * * *', 5 + 10 * (k - 1)), 'allow',
                interval '2 hours'
           FROM unnest($1::text[]) WITH ORDINALITY AS x (r, k)",
        &[&roots],
    )
    .await?;
    c.execute(
        "INSERT INTO sisy.jobs (name, command, trigger_rule)
         SELECT n, format('/usr/local/bin/%s', n), r FROM unnest($1::text[], $2::text[]) AS x (n, r)",
        &[&names, &rules],
    )
    .await?;
    c.execute(
        "INSERT INTO sisy.dependencies (job, upstream) SELECT * FROM unnest($1::text[], $2::text[])",
        &[&jobs, &ups],
    )
    .await?;
    Ok((roots.len() + names.len()) as i64)
}

/// Opens the flow runs (the roots' runs, inserted with the triggers on) and ends their
/// members' runs round by round until every flow run but the newest of each root has ended;
/// those keep their second round running. Returns the rounds.
async fn run_flows(c: &Client) -> Result<i64> {
    let roots: Vec<String> = flows().into_iter().map(|(r, _)| r).collect();
    c.execute(
        "INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline, created_at)
         SELECT j.id, j.name, j.pool, x.t, 'schedule', x.t, x.t + j.ttl, x.t
           FROM sisy.jobs j
          CROSS JOIN generate_series(1, $2::int) n
          CROSS JOIN LATERAL (SELECT date_trunc('hour', now())
                                     + make_interval(mins => split_part(j.schedule, ' ', 1)::int)
                                     - n * interval '1 hour' AS t) x
          WHERE j.name = ANY ($1::text[])
          ORDER BY x.t, j.id",
        &[&roots, &FLOW_HOURS],
    )
    .await?;
    // The flow runs of the newest occurrence of each root (at most an hour old) keep running.
    let recent: chrono::DateTime<chrono::Utc> = c
        .query_one("SELECT date_trunc('hour', now()) - interval '1 hour'", &[])
        .await?
        .get(0);
    let mut rounds = 0i64;
    loop {
        let ended = c.execute(FLOW_ROUND, &[&(rounds as i32), &recent]).await?;
        if ended == 0 {
            break;
        }
        rounds += 1;
        if rounds > 40 {
            bail!("the flow runs still had pending runs after 40 rounds");
        }
    }
    c.execute(FLOW_RUNNING, &[&recent]).await?;
    c.batch_execute(FLOW_TIMES).await?;
    Ok(rounds)
}

async fn counts(c: &Client) -> Result<Value> {
    let by_state = |sql: &'static str| async move {
        let rows = c.query(sql, &[]).await?;
        let map: serde_json::Map<String, Value> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), json!(r.get::<_, i64>(1))))
            .collect();
        anyhow::Ok(Value::Object(map))
    };
    let jobs = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE suspended),
                    count(*) FILTER (WHERE schedule_error IS NOT NULL),
                    count(*) FILTER (WHERE timezone <> 'UTC'), count(*) FILTER (WHERE env <> '{}'),
                    (SELECT count(*) FROM sisy.dependencies)
               FROM sisy.jobs",
            &[],
        )
        .await?;
    let hosts = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE lease_until < now()),
                    count(*) FILTER (WHERE draining), sum(running)::bigint
               FROM sisy.hosts",
            &[],
        )
        .await?;
    let sizes = c
        .query_one(
            "SELECT pg_relation_size('sisy.runs'), pg_indexes_size('sisy.runs'),
                    pg_total_relation_size('sisy.runs'), sum(output_bytes)::bigint,
                    count(*) FILTER (WHERE output LIKE E'%\\x1b[%')
               FROM sisy.runs",
            &[],
        )
        .await?;
    let mb = |b: i64| round(b as f64 / 1048576.0, 1);
    Ok(json!({
        "jobs": {
            "total": jobs.get::<_, i64>(0),
            "suspended": jobs.get::<_, i64>(1),
            "schedule_error": jobs.get::<_, i64>(2),
            "not_utc": jobs.get::<_, i64>(3),
            "with_env": jobs.get::<_, i64>(4),
            "dependencies": jobs.get::<_, i64>(5),
        },
        "hosts": {
            "total": hosts.get::<_, i64>(0),
            "dead": hosts.get::<_, i64>(1),
            "draining": hosts.get::<_, i64>(2),
            "running": hosts.get::<_, Option<i64>>(3),
        },
        "runs_by_state": by_state("SELECT state, count(*) FROM sisy.runs GROUP BY 1 ORDER BY 2 DESC").await?,
        "flow_runs_by_state": by_state("SELECT state, count(*) FROM sisy.flow_runs GROUP BY 1 ORDER BY 2 DESC").await?,
        "flow_run_members": c.query_one("SELECT count(*) FROM sisy.flow_run_members", &[]).await?.get::<_, i64>(0),
        "runs_table_mb": {
            "heap": mb(sizes.get(0)),
            "indexes": mb(sizes.get(1)),
            "total": mb(sizes.get(2)),
            "output": mb(sizes.get::<_, Option<i64>>(3).unwrap_or(0)),
        },
        "runs_with_ansi_output": sizes.get::<_, i64>(4),
    }))
}

const HOSTS: &str = "
INSERT INTO sisy.hosts (name, pools, version, started_at, last_seen, lease_until, capacity, draining)
SELECT format('node-%s', lpad(i::text, 3, '0')),
       CASE WHEN i > 180 THEN '{batch}'::text[] ELSE '{default}'::text[] END,
       CASE WHEN i % 9 = 0 THEN '0.0.9' ELSE '0.1.0' END,
       now() - make_interval(days => 1 + i % 30),
       CASE WHEN i % 20 = 7 THEN now() - make_interval(hours => i) ELSE now() - interval '2 s' END,
       CASE WHEN i % 20 = 7 THEN now() - make_interval(hours => i) + interval '30 s'
            ELSE now() + interval '1 hour' END,
       16, i % 40 = 13
  FROM generate_series(1, 200) i";

/// $1: how many. Job i's schedule class: i % 1000 = 999 an error, i % 500 = 0 every five
/// minutes, i % 100 = 1 hourly, else daily at minute (i / 24) % 60 of hour i % 24.
const JOBS_SQL: &str = "
INSERT INTO sisy.jobs (name, command, schedule, timezone, pool, ttl, max_runtime, max_retries,
                       overlap, env, run_as, workdir, suspended, next_due, schedule_error)
SELECT format('job%s-%s', i, t.task),
       format('/usr/local/bin/%s --shard %s', t.task, i % 64),
       CASE WHEN i % 1000 = 999 THEN format('%s 25 * * *', i % 60)
            WHEN i % 500 = 0 THEN '*/5 * * * *'
            WHEN i % 100 = 1 THEN format('%s * * * *', i % 60)
            ELSE format('%s %s * * *', (i / 24) % 60, i % 24) END,
       z.tz,
       CASE WHEN i % 20 = 19 THEN 'batch' ELSE 'default' END,
       CASE WHEN i % 4 = 0 THEN interval '1 hour' ELSE interval '5 minutes' END,
       CASE WHEN i % 3 = 0 THEN interval '10 minutes' END,
       CASE WHEN i % 7 = 0 THEN 2 ELSE 0 END,
       CASE WHEN i % 11 = 0 THEN 'allow' ELSE 'forbid' END,
       CASE WHEN i % 3 = 0
            THEN jsonb_build_object('DATABASE_URL', format('postgres://app:s3cret-%s@db%s/app', i, i % 8),
                                    'LOG_LEVEL', 'info')
            ELSE '{}' END,
       CASE WHEN i % 5 = 0 THEN 'app' END,
       CASE WHEN i % 5 = 0 THEN '/srv/app' END,
       i % 50 = 3,
       CASE WHEN i % 1000 = 999 OR i % 50 = 3 THEN NULL
            WHEN i % 500 = 0 THEN date_bin('5 minutes', now(), '2000-01-01') + interval '5 minutes'
            WHEN i % 100 = 1 THEN date_trunc('hour', now()) + make_interval(hours => 1, mins => i % 60)
            ELSE (SELECT CASE WHEN d > now() THEN d ELSE d + interval '1 day' END
                    FROM (SELECT (date_trunc('day', now() AT TIME ZONE z.tz)
                                  + make_interval(hours => i % 24, mins => (i / 24) % 60))
                                 AT TIME ZONE z.tz AS d) x) END,
       CASE WHEN i % 1000 = 999
            THEN format('invalid schedule ''%s 25 * * *'': hour 25 is out of range 0-23', i % 60) END
  FROM generate_series(1, $1::bigint::int) i,
       LATERAL (SELECT (ARRAY['backup-db', 'rotate-logs', 'sync-mirror', 'report-daily', 'cleanup-tmp',
                              'refresh-cache', 'export-metrics', 'renew-certs', 'reindex-search',
                              'send-digest', 'compact-store', 'check-disk'])[1 + i % 12] AS task) t,
       LATERAL (SELECT CASE WHEN i % 10 = 4 THEN 'Europe/Amsterdam'
                            WHEN i % 10 = 6 THEN 'America/New_York'
                            WHEN i % 25 = 8 THEN 'Asia/Tokyo' ELSE 'UTC' END AS tz) z";

/// One round of the flows: every pending run of a flow run ends, `$1` minutes after its flow
/// run's logical time; 2 % fail. The flow runs from `$2` on take two rounds only.
const FLOW_ROUND: &str = "
UPDATE sisy.runs r
   SET state = CASE WHEN x.fails THEN 'failed' ELSE 'succeeded' END,
       host = format('node-%s', lpad((1 + (r.flow_run_id * 31 + x.h) % 178)::text, 3, '0')),
       pid = 1000 + (r.id % 60000)::int,
       due_at = x.due, created_at = x.due, deadline = x.due + interval '5 minutes',
       claimed_at = x.due + interval '3 ms', started_at = x.due + interval '5 ms',
       heartbeat_at = x.due + interval '40 s', finished_at = x.due + interval '42 s',
       exit_code = CASE WHEN x.fails THEN 1 ELSE 0 END,
       error = CASE WHEN x.fails THEN 'exited with code 1' END,
       output = x.output, output_bytes = octet_length(x.output)
  FROM (SELECT p.id, p.due, p.h, p.fails,
               CASE WHEN p.fails
                    THEN format(E'%s: step %s\\n\\x1b[31merror:\\x1b[0m upstream data for %s incomplete\\n',
                                p.job_name, $1::int, p.scheduled_for)
                    ELSE format(E'%s: step %s\\nok (%s rows)\\n', p.job_name, $1::int, p.h % 100000) END AS output
          FROM (SELECT v.id, v.job_name, f.scheduled_for,
                       f.scheduled_for + $1::int * interval '1 minute' AS due,
                       abs(hashtext(v.job_name || v.flow_run_id)) AS h,
                       abs(hashtext(v.job_name || v.flow_run_id)) % 50 = 0 AS fails
                  FROM sisy.runs v JOIN sisy.flow_runs f ON f.id = v.flow_run_id
                 WHERE v.flow_run_id IS NOT NULL AND v.state = 'pending'
                   AND (f.scheduled_for < $2 OR $1::int < 2)) p) x
 WHERE r.id = x.id";

/// The members left pending in the newest flow runs (from `$1`) run on live, undrained hosts.
const FLOW_RUNNING: &str = "
UPDATE sisy.runs r
   SET state = 'running', host = format('node-%s', lpad(x.n::text, 3, '0')),
       pid = 1000 + (r.id % 60000)::int,
       due_at = x.due, created_at = x.due, deadline = x.due + interval '5 minutes',
       claimed_at = x.due + interval '3 ms', started_at = x.due + interval '5 ms',
       heartbeat_at = now() - interval '2 s'
  FROM (SELECT v.id, f.scheduled_for + interval '2 minutes' AS due,
               CASE WHEN n0 % 20 = 7 OR n0 % 40 = 13 THEN n0 + 1 ELSE n0 END AS n
          FROM sisy.runs v JOIN sisy.flow_runs f ON f.id = v.flow_run_id,
               LATERAL (SELECT 1 + (v.id % 178)::int AS n0) a
         WHERE v.flow_run_id IS NOT NULL AND v.state = 'pending' AND f.scheduled_for >= $1) x
 WHERE r.id = x.id";

/// The engine stamped what it decided with the time of loading: move it to the flow run's
/// logical time (a member that did not run: when its last upstream ended), and the flow run
/// to when its last run ended.
const FLOW_TIMES: &str = "
UPDATE sisy.runs r SET created_at = s.t, due_at = s.t, deadline = s.t, finished_at = s.t
  FROM (SELECT v.id,
               (SELECT max(u.finished_at) FROM sisy.runs u
                 WHERE u.flow_run_id = v.flow_run_id AND u.id < v.id
                   AND u.state IN ('succeeded', 'failed')) AS t
          FROM sisy.runs v
         WHERE v.flow_run_id IS NOT NULL
           AND v.state NOT IN ('succeeded', 'failed', 'running', 'pending')) s
 WHERE r.id = s.id AND s.t IS NOT NULL;
UPDATE sisy.flow_runs f
   SET created_at = f.scheduled_for,
       checked_at = CASE WHEN f.state = 'running' THEN now() ELSE f.scheduled_for END,
       deadline = CASE WHEN f.state = 'running' THEN now() + interval '1 hour' END,
       finished_at = CASE WHEN f.state <> 'running'
                          THEN (SELECT max(finished_at) FROM sisy.runs WHERE flow_run_id = f.id) END";

/// Every occurrence of the plain jobs' schedules in their history span, numbered in time
/// order (`i`), with how many there are (`total`): the runs are inserted in that order.
const OCCURRENCES: &str = "
CREATE TEMP TABLE occurrences AS
SELECT job_id, name, pool, ttl, max_runtime, t,
       row_number() OVER (ORDER BY t, job_id) AS i, count(*) OVER () AS total
  FROM (SELECT j.id AS job_id, j.name, j.pool, j.ttl, j.max_runtime, o.t
          FROM sisy.jobs j
         CROSS JOIN LATERAL (
                SELECT date_bin('5 minutes', now(), '2000-01-01') - n * interval '5 minutes' AS t
                  FROM generate_series(1, 900) n WHERE j.schedule = '*/5 * * * *'
                UNION ALL
                SELECT date_trunc('hour', now()) + make_interval(mins => split_part(j.schedule, ' ', 1)::int)
                       - n * interval '1 hour'
                  FROM generate_series(1, 180) n
                 WHERE j.schedule <> '*/5 * * * *' AND split_part(j.schedule, ' ', 2) = '*'
                UNION ALL
                SELECT x.t FROM generate_series(0, 6) n,
                       LATERAL (SELECT (date_trunc('day', now() AT TIME ZONE j.timezone)
                                        + make_interval(days => -n, hours => split_part(j.schedule, ' ', 2)::int,
                                                        mins => split_part(j.schedule, ' ', 1)::int))
                                       AT TIME ZONE j.timezone AS t) x
                 WHERE split_part(j.schedule, ' ', 2) <> '*' AND x.t < now() - interval '1 minute'
               ) o
         WHERE j.schedule_error IS NULL AND j.name LIKE 'job%') a
 ORDER BY t, job_id";

/// The runs, in the order of `occurrences` (a fresh temporary table is read in the order it
/// was written, so ids follow time without sorting the wide rows). State by `i`; output by
/// a hash of `i`, so that its numbers vary.
const RUNS: &str = "
INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt, due_at, deadline,
                       state, host, pid, claimed_at, started_at, finished_at, heartbeat_at,
                       exit_code, signal, output, output_bytes, error, kill_requested_at,
                       missed_count, created_at)
SELECT o.job_id, o.name, o.pool, o.t, CASE WHEN o.i % 97 = 0 THEN 'manual' ELSE 'schedule' END, 1,
       o.t, o.t + o.ttl, s.st,
       h.host,
       CASE WHEN s.began THEN 1000 + (o.i % 60000)::int END,
       CASE WHEN s.began THEN o.t + interval '3 ms' END,
       CASE WHEN s.began THEN o.t + interval '5 ms' END,
       s.ended,
       CASE WHEN s.st = 'running' THEN now() - make_interval(secs => o.i % 5)
            WHEN s.began THEN s.ended END,
       CASE WHEN s.st = 'succeeded' THEN 0
            WHEN s.st = 'failed' AND o.i % 9 <> 0 THEN (ARRAY[1, 2, 1, 127, 1, 3])[1 + o.i % 6] END,
       CASE WHEN s.st IN ('timed_out', 'killed') THEN 15 WHEN s.st = 'failed' AND o.i % 9 = 0 THEN 9 END,
       x.output, octet_length(x.output),
       CASE s.st
            WHEN 'failed' THEN CASE WHEN o.i % 9 = 0 THEN 'terminated by signal SIGKILL (9)'
                                    ELSE format('exited with code %s', (ARRAY[1, 2, 1, 127, 1, 3])[1 + o.i % 6]) END
            WHEN 'timed_out' THEN 'exceeded max_runtime (10m): the process group was sent SIGTERM, then SIGKILL after kill_grace'
            WHEN 'killed' THEN 'killed on request'
            WHEN 'lost' THEN format('the guardian on %s stopped heartbeating (lease expired); declared lost by node-%s',
                                    h.host, lpad((1 + o.i % 150)::text, 3, '0'))
            WHEN 'expired' THEN CASE WHEN s.missed = 1
                 THEN format('missed the occurrence of %s: no guardian of pool ''%s'' started it within its ttl (%s)',
                             o.t, o.pool, o.ttl)
                 ELSE format('missed %s occurrences from %s to %s: no guardian of pool ''%s'' started them within their ttl (%s)',
                             s.missed, o.t, o.t + (s.missed - 1) * interval '1 minute', o.pool, o.ttl) END
            WHEN 'skipped' THEN format('skipped: run %s of this job was still running (overlap = forbid)', o.i - 1)
            WHEN 'cancelled' THEN 'cancelled by sisy.kill before it started' END,
       CASE WHEN s.st = 'killed' THEN s.ended - interval '1 second' END,
       s.missed,
       o.t - interval '20 ms'
  FROM occurrences o
 CROSS JOIN LATERAL (
        SELECT st, st NOT IN ('pending', 'expired', 'skipped', 'cancelled') AS began,
               CASE WHEN st IN ('pending', 'running') THEN NULL
                    WHEN st = 'expired' THEN o.t + o.ttl
                    WHEN st IN ('skipped', 'cancelled') THEN o.t + interval '2 ms'
                    WHEN st = 'timed_out' THEN o.t + o.max_runtime + interval '10 s'
                    ELSE o.t + interval '5 ms' + make_interval(secs => (o.i % 173) + (o.i % 1000) / 1000.0) END AS ended,
               CASE WHEN st = 'expired' THEN 1 + o.i % 7 ELSE 1 END AS missed
          FROM (SELECT CASE WHEN o.total - o.i < 120 THEN 'pending'
                            WHEN o.total - o.i < 420 THEN 'running'
                            WHEN o.i % 1000 = 1 THEN 'lost'
                            WHEN o.i % 1000 = 2 THEN 'killed'
                            WHEN o.i % 200 = 3 AND o.max_runtime IS NOT NULL THEN 'timed_out'
                            WHEN o.i % 100 = 5 THEN 'expired'
                            WHEN o.i % 200 = 6 THEN 'skipped'
                            WHEN o.i % 5000 = 9 THEN 'cancelled'
                            WHEN o.i % 40 = 0 OR (o.job_id % 200 = 17 AND o.i % 2 = 0) THEN 'failed'
                            ELSE 'succeeded' END AS st) s0) s
 CROSS JOIN LATERAL (
        SELECT CASE WHEN NOT s.began THEN NULL
                    WHEN s.st = 'lost' THEN CASE WHEN o.pool = 'batch' THEN 'node-187'
                                                 ELSE format('node-%s', lpad((7 + 20 * (o.i % 9))::text, 3, '0')) END
                    WHEN o.pool = 'default' AND o.i % 3000 = 1234 THEN 'node-179'
                    ELSE format('node-%s', lpad(n::text, 3, '0')) END AS host
          FROM (SELECT CASE WHEN s.st = 'running' AND (n0 % 20 = 7 OR n0 % 40 = 13) THEN n0 + 1 ELSE n0 END AS n
                  FROM (SELECT CASE WHEN o.pool = 'batch' THEN 181 + (o.i * 7919) % 20
                                    ELSE 1 + (o.i * 7919) % 178 END AS n0) a) b) h
 CROSS JOIN LATERAL (SELECT (o.i * 2654435761) % 4294967291 AS v) r
 CROSS JOIN LATERAL (
        SELECT CASE
            WHEN s.st IN ('pending', 'running', 'expired', 'skipped', 'cancelled', 'lost') THEN NULL
            WHEN s.st = 'failed' THEN CASE (o.i / 7) % 4
                WHEN 0 THEN format(E'Traceback (most recent call last):\\n  File \"/usr/local/bin/%s\", line %s, in <module>\\n    main()\\n  File \"/usr/local/lib/python3.11/site-packages/app/cli.py\", line 88, in main\\n    conn = connect(settings.DATABASE_URL)\\n  File \"/usr/local/lib/python3.11/site-packages/psycopg/connection.py\", line 728, in connect\\n    raise last_ex.with_traceback(None)\\npsycopg.OperationalError: connection failed: connection to server at \"10.0.%s.%s\", port 5432 failed: timeout expired\\n',
                                   split_part(o.name, '-', 2), 40 + ((r.v / 7) % 200), ((r.v / 13) % 16), ((r.v / 31) % 250))
                WHEN 1 THEN format(E'\\x1b[1;34m==>\\x1b[0m Syncing mirror \\x1b[1m%s\\x1b[0m\\n\\x1b[31merror:\\x1b[0m could not fetch origin: ssh: connect to host git%s.example.com port 22: Connection refused\\n\\x1b[31merror:\\x1b[0m giving up after 3 attempts\\n',
                                   o.name, ((r.v / 61) % 4))
                WHEN 2 THEN format(E'+ set -euo pipefail\\n+ cd /srv/app\\n+ ./bin/%s --shard %s\\nERROR: disk quota exceeded on /data (used %s GB of 500 GB)\\n',
                                   o.name, ((r.v / 127) % 64), 490 + ((r.v / 251) % 10))
                ELSE E'curl: (28) Operation timed out after 30001 milliseconds with 0 bytes received\\n' END
            WHEN s.st = 'timed_out' THEN format(E'starting batch run for %s\\nprocessed 1000 of %s items\\nprocessed 2000 of %s items\\nwaiting for lock on table events ...\\n',
                                                o.name, 5000 + ((r.v / 509) % 5000), 5000 + ((r.v / 509) % 5000))
            WHEN s.st = 'killed' THEN format(E'starting %s\\nreceived SIGTERM, shutting down (in flight: %s)\\n', o.name, ((r.v / 2039) % 20))
            WHEN r.v % 1000 = 500 THEN (SELECT string_agg(format('[%s] item %s/%s: copied %s bytes to /data/out/%s',
                                                                 o.t + k * interval '37 ms', k, 300, (k * 7919 + o.i) % 1000000,
                                                                 md5((o.i + k)::text)), E'\\n') || E'\\n'
                                          FROM generate_series(1, 300) k)
            ELSE CASE (o.i / 7) % 10
                WHEN 0 THEN format(E'pg_dump: dumping contents of database \"app%s\"\\npg_dump: %s tables, %s rows\\ncompressing with zstd -3\\nwrote /var/backups/app%s/%s.sql.zst (%s MB)\\nuploading to s3://acme-backups/app%s/ ... done (etag \"%s\")\\nretention: removed %s backups older than 14 days\\n',
                                   ((r.v / 7) % 8), 100 + ((r.v / 13) % 300), ((r.v / 31) % 9000000), ((r.v / 7) % 8),
                                   to_char(o.t, 'YYYY-MM-DD\"T\"HH24MI'), 100 + ((r.v / 61) % 4000), ((r.v / 7) % 8),
                                   md5(o.i::text), ((r.v / 127) % 3))
                WHEN 1 THEN format(E'\\x1b[1;34m==>\\x1b[0m Syncing mirror \\x1b[1m%s\\x1b[0m\\n\\x1b[32m✔\\x1b[0m fetched %s refs (%s new objects)\\n\\x1b[32m✔\\x1b[0m pruned %s stale refs\\n\\x1b[33mwarning:\\x1b[0m ref refs/heads/tmp-%s could not be verified, skipped\\n\\x1b[1;32mdone\\x1b[0m in %s.%s s\\n',
                                   o.name, ((r.v / 251) % 50), ((r.v / 509) % 2000), ((r.v / 1021) % 5),
                                   ((r.v / 2039) % 1000), ((r.v / 1) % 60), ((r.v / 7) % 10))
                WHEN 2 THEN format(E'rotating /var/log/app/*.log\\n  app.log -> app.log.1 (%s MB)\\n  access.log -> access.log.1 (%s MB)\\n  error.log -> error.log.1 (%s kB)\\ncompressed 3 files, freed %s MB\\nsent SIGHUP to app (pid %s)\\n',
                                   ((r.v / 13) % 500), ((r.v / 31) % 2000), ((r.v / 61) % 900), ((r.v / 127) % 2500),
                                   1000 + ((r.v / 251) % 30000))
                WHEN 3 THEN ''
                WHEN 4 THEN format(E'{\"level\":\"info\",\"ts\":\"%s\",\"msg\":\"starting\",\"job\":\"%s\"}\\n{\"level\":\"info\",\"ts\":\"%s\",\"msg\":\"processed batch\",\"items\":%s,\"ms\":%s}\\n{\"level\":\"info\",\"ts\":\"%s\",\"msg\":\"processed batch\",\"items\":%s,\"ms\":%s}\\n{\"level\":\"info\",\"ts\":\"%s\",\"msg\":\"finished\",\"total\":%s}\\n',
                                   o.t, o.name, o.t + interval '1 s', ((r.v / 509) % 1000), ((r.v / 1021) % 700),
                                   o.t + interval '2 s', ((r.v / 2039) % 999), ((r.v / 1) % 800), o.t + interval '3 s',
                                   ((r.v / 7) % 2000))
                WHEN 5 THEN format(E'\\x1b[2m[%s]\\x1b[0m refreshing cache keys\\n\\x1b[36minfo\\x1b[0m  %s keys scanned, %s expired\\n\\x1b[36minfo\\x1b[0m  %s keys refreshed in %s ms\\n\\x1b[32mOK\\x1b[0m\\n',
                                   to_char(o.t, 'HH24:MI:SS'), ((r.v / 13) % 100000), ((r.v / 31) % 5000),
                                   ((r.v / 61) % 4000), ((r.v / 127) % 900))
                WHEN 6 THEN E'OK\\n'
                WHEN 7 THEN format(E'Daily report for %s\\n========================\\norders: %s\\nrevenue: %s.%s EUR\\nrefunds: %s\\nmail sent to reports@example.com (message-id <%s@mail.example.com>)\\n',
                                   to_char(o.t, 'YYYY-MM-DD'), ((r.v / 251) % 10000), ((r.v / 509) % 1000000),
                                   lpad(((r.v / 1021) % 100)::text, 2, '0'), ((r.v / 2039) % 40), left(md5(o.i::text), 16))
                WHEN 8 THEN format(E'checking 14 certificates\\n  api.example.com: valid until 2027-03-%s (%s days)\\n  www.example.com: valid until 2027-02-%s (%s days)\\nnothing to renew\\n',
                                   lpad((1 + ((r.v / 1) % 28))::text, 2, '0'), 60 + ((r.v / 7) % 30),
                                   lpad((1 + ((r.v / 13) % 28))::text, 2, '0'), 40 + ((r.v / 31) % 30))
                ELSE format(E'Filesystem      Size  Used Avail Use%% Mounted on\\n/dev/sda1       100G   %sG   %sG  %s%% /\\n/dev/sdb1       2.0T  %sG  %sG  %s%% /data\\nok: below 90%% threshold\\n',
                            20 + ((r.v / 61) % 60), 80 - ((r.v / 61) % 60), 20 + ((r.v / 61) % 60),
                            500 + ((r.v / 127) % 1000), 1500 - ((r.v / 127) % 1000), 25 + ((r.v / 127) % 50)) END
            END AS output) x";

/// The live hosts as their last heartbeat left them, just now: each one's count of running
/// runs, and those runs' heartbeats. (No guardian renews them: their leases run for an hour.)
const HOSTS_RUNNING: &str = "
UPDATE sisy.hosts h
   SET running = (SELECT count(*) FROM sisy.runs r WHERE r.state = 'running' AND r.host = h.name),
       last_seen = now()
 WHERE lease_until > now();
UPDATE sisy.runs SET heartbeat_at = now() - make_interval(secs => id % 5) WHERE state = 'running'";

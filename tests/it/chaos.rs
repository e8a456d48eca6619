//! The seeded chaos test: four guardians run a mix of jobs while guardians are SIGKILLed
//! (and restarted) and SIGSTOPped (and resumed) at random, and the database restarts once;
//! then the invariants are checked on the tables and on /proc.
//!
//! The seed decides the sequence of actions (which guardian, what, how long); timing on a
//! loaded machine does the rest. It is printed first; `SISY_CHAOS_SEED=N` replays it and
//! `SISY_CHAOS_SECS` changes the length of the chaos phase (70 s by default).
//!
//! Invariants:
//! - every run ends in a final state;
//! - a run starts its process at most once (each job process appends its run id to a file);
//! - no occurrence of an `any` job ran twice, apart from the documented retries: an attempt
//!   that started is followed by another started attempt only if it ended failed,
//!   timed_out, lost or killed by a shutdown;
//! - every occurrence of the every-second and every-two-seconds jobs has a record (it ran, or
//!   is expired, skipped or lost), with no gap between the first and the last;
//! - no job process outlives the fleet;
//! - flows (a root every two seconds, a flaky member, a join, a fallback, a cleanup): every
//!   flow run ends; each member is decided once per flow run (one decided row or run chain,
//!   never two); no member's process starts before its upstreams' last attempts finished;
//!   a flow run's state agrees with its members' outcomes.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;

use crate::pg::Server;
use crate::util::{Guardian, migrated_db_on, processes_with_env, shared_dir, wait_for, wait_until};

/// SplitMix64: a tiny, stable generator, so a seed means the same actions in every build.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi) milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What the chaos has done to one guardian.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Up,
    Paused { until: Instant },
    Killed { restart_at: Instant },
}

#[derive(Debug, Default)]
struct Tally {
    kills: usize,
    pauses: usize,
    db_restarts: usize,
}

/// `(period in seconds, schedule)` of the `any` jobs whose occurrences are counted.
const COUNTED: [(&str, i64); 3] = [("c-fast", 1), ("c-flaky", 1), ("c-slow", 2)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_keeps_the_invariants() {
    let seed = std::env::var("SISY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let chaos_for = Duration::from_secs(
        std::env::var("SISY_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(70),
    );
    eprintln!("chaos seed {seed} (replay: SISY_CHAOS_SEED={seed} cargo test --test it chaos)");
    let mut rng = Rng(seed);

    let server = Server::start_private();
    let (db, client) = migrated_db_on(&server).await;
    let dir = shared_dir();
    let starts = dir.path().join("starts");
    let tag = format!("chaos-{}", db.name);
    let prefix = format!(
        "echo \"$SISY_RUN_ID $SISY_JOB $SISY_ATTEMPT\" >> {};",
        starts.display()
    );
    client
        .execute(
            "INSERT INTO sisy.jobs (name, schedule, target, overlap, command, max_retries, retry_delay, ttl, kill_grace, env)
             SELECT name, schedule, target, overlap, $1 || ' ' || command, retries, delay::interval, '10 seconds',
                    '1 second', jsonb_build_object('CHAOS_TAG', $2::text)
               FROM (VALUES ('c-fast',  '* * * * * *',   'any', 'allow',  'true',                              2, '0'),
                            ('c-flaky', '* * * * * *',   'any', 'allow',  '[ $((SISY_RUN_ID % 3)) -ne 0 ]',    1, '0'),
                            ('c-slow',  '*/2 * * * * *', 'any', 'forbid', 'sleep 1.5',                         2, '1 second'),
                            ('c-all',   '*/3 * * * * *', 'all', 'allow',  'sleep 0.3',                         0, '0'))
                    AS j (name, schedule, target, overlap, command, retries, delay)",
            &[&prefix, &tag],
        )
        .await
        .unwrap();
    // A flow: f-root → f-a, f-b (fails one run in three, no retry) → f-join (all_success)
    // → f-fallback (one_failed), f-cleanup (all_done).
    client
        .execute(
            "INSERT INTO sisy.jobs (name, schedule, overlap, command, max_retries, retry_delay, ttl, kill_grace, trigger_rule, env)
             SELECT name, schedule, 'allow', $1 || ' ' || command, retries, '0', '10 seconds', '1 second', rule,
                    jsonb_build_object('CHAOS_TAG', $2::text)
               FROM (VALUES ('f-root',     '*/2 * * * * *', 'true',                           0, 'all_success'),
                            ('f-a',        NULL,            'sleep 0.2',                      1, 'all_success'),
                            ('f-b',        NULL,            '[ $((SISY_RUN_ID % 3)) -ne 0 ]', 0, 'all_success'),
                            ('f-join',     NULL,            'true',                           0, 'all_success'),
                            ('f-fallback', NULL,            'true',                           0, 'one_failed'),
                            ('f-cleanup',  NULL,            'true',                           0, 'all_done'))
                    AS j (name, schedule, command, retries, rule)",
            &[&prefix, &tag],
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO sisy.dependencies (job, upstream) VALUES
               ('f-a', 'f-root'), ('f-b', 'f-root'), ('f-join', 'f-a'), ('f-join', 'f-b'),
               ('f-fallback', 'f-join'), ('f-cleanup', 'f-join')",
        )
        .await
        .unwrap();
    let mut guardians: Vec<Guardian> = (1..=4)
        .map(|i| Guardian::start(&db, &format!("g{i}"), "capacity = 4"))
        .collect();
    let mut fates = [Fate::Up; 4];
    let mut tally = Tally::default();

    // The chaos: an action every 1.5–3.5 s; the database restarts once, half-way.
    let began = Instant::now();
    let mut next_action = began + rng.millis(1500, 3500);
    let db_restart_at = began + chaos_for / 2;
    while began.elapsed() < chaos_for {
        let now = Instant::now();
        for (i, fate) in fates.iter_mut().enumerate() {
            match *fate {
                Fate::Paused { until } if now >= until => {
                    guardians[i].signal(Signal::SIGCONT);
                    *fate = Fate::Up;
                }
                Fate::Killed { restart_at } if now >= restart_at => {
                    guardians[i].restart();
                    *fate = Fate::Up;
                }
                _ => {}
            }
        }
        if tally.db_restarts == 0 && now >= db_restart_at {
            tokio::task::block_in_place(|| server.restart());
            tally.db_restarts += 1;
        }
        if now >= next_action {
            next_action = now + rng.millis(1500, 3500);
            let victim = rng.below(4);
            let kill = rng.below(2) == 0;
            let up = fates.iter().filter(|f| **f == Fate::Up).count();
            // Keep at least two guardians up, so that the fleet makes progress.
            if fates[victim] == Fate::Up && up > 2 {
                if kill {
                    guardians[victim].kill();
                    fates[victim] = Fate::Killed {
                        restart_at: now + rng.millis(1000, 4000),
                    };
                    tally.kills += 1;
                } else {
                    guardians[victim].signal(Signal::SIGSTOP);
                    fates[victim] = Fate::Paused {
                        until: now + rng.millis(2000, 6000),
                    };
                    tally.pauses += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, fate) in fates.iter().enumerate() {
        match fate {
            Fate::Paused { .. } => guardians[i].signal(Signal::SIGCONT),
            Fate::Killed { .. } => guardians[i].restart(),
            Fate::Up => {}
        }
    }

    // Settle: no new occurrences; everything materialised runs, expires or is retried out.
    let client = db.connect().await;
    wait_until(
        &client,
        "all four guardians live",
        Duration::from_secs(30),
        || "SELECT count(*) FROM sisy.hosts WHERE lease_until > now()".into(),
        |n: i64| n == 4,
    )
    .await;
    client
        .batch_execute("UPDATE sisy.jobs SET suspended = true")
        .await
        .unwrap();
    wait_until(
        &client,
        "every run to reach a final state",
        Duration::from_secs(90),
        || {
            "SELECT (SELECT count(*) FROM sisy.runs WHERE state IN ('pending', 'running'))
                 + (SELECT count(*) FROM sisy.flow_runs WHERE state = 'running')"
                .into()
        },
        |n: i64| n == 0,
    )
    .await;
    for g in &mut guardians {
        assert_eq!(g.stop(), Some(0), "guardian log:\n{}", g.log());
    }
    wait_for("no job process left", Duration::from_secs(15), || {
        processes_with_env("CHAOS_TAG", &tag).is_empty()
    })
    .await;

    check_invariants(&client, &std::fs::read_to_string(&starts).unwrap(), &tally).await;
    check_flows(&client).await;
}

/// The flows' invariants, on the tables once everything has ended.
async fn check_flows(client: &tokio_postgres::Client) {
    let scalar = |sql: &'static str| async move {
        let n: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        n
    };
    let flow_runs = scalar("SELECT count(*) FROM sisy.flow_runs").await;
    assert!(flow_runs >= 10, "only {flow_runs} flow runs");
    // Each member decided once per flow run: one chain of attempts from one decision.
    let twice = client
        .query(
            "SELECT flow_run_id, job_name, count(*) FROM sisy.runs
              WHERE flow_run_id IS NOT NULL AND reason = 'flow'
              GROUP BY 1, 2 HAVING count(*) > 1",
            &[],
        )
        .await
        .unwrap();
    assert!(
        twice.is_empty(),
        "members decided twice: {:?}",
        twice
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    );
    // Every member of every flow run has its outcome; nothing is left undecided.
    let open = scalar(
        "SELECT count(*) FROM sisy.flow_run_members m JOIN sisy.flow_runs f ON f.id = m.flow_run_id
          WHERE f.state IN ('succeeded', 'failed') AND m.outcome IS NULL",
    )
    .await;
    assert_eq!(open, 0, "members without an outcome in ended flow runs");
    // No member's process started before its upstreams' last attempts had finished.
    let early = client
        .query(
            "SELECT r.id, r.job_name, e.upstream FROM sisy.runs r
               JOIN sisy.flow_run_edges e ON e.flow_run_id = r.flow_run_id AND e.job = r.job_name
               JOIN sisy.runs u ON u.flow_run_id = r.flow_run_id AND u.job_name = e.upstream
              WHERE r.started_at IS NOT NULL AND (u.finished_at IS NULL OR u.finished_at > r.started_at)
                AND u.attempt = (SELECT max(attempt) FROM sisy.runs u2
                                  WHERE u2.flow_run_id = u.flow_run_id AND u2.job_name = u.job_name)",
            &[],
        )
        .await
        .unwrap();
    assert!(
        early.is_empty(),
        "members started before their upstreams finished: {:?}",
        early
            .iter()
            .map(|r| (
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            ))
            .collect::<Vec<_>>()
    );
    // A flow run's state agrees with its members' outcomes.
    let wrong = scalar(
        "SELECT count(*) FROM sisy.flow_runs f
          WHERE f.state IN ('succeeded', 'failed', 'skipped')
            AND f.state <> CASE
                WHEN (SELECT outcome FROM sisy.flow_run_members WHERE flow_run_id = f.id AND job = f.root_job) = 'skipped' THEN 'skipped'
                WHEN EXISTS (SELECT 1 FROM sisy.flow_run_members WHERE flow_run_id = f.id AND outcome = 'failure') THEN 'failed'
                ELSE 'succeeded' END",
    )
    .await;
    assert_eq!(
        wrong, 0,
        "flow runs whose state disagrees with their members"
    );
    // The fallback ran wherever the join failed (unless the settle had suspended it).
    let silent = scalar(
        "SELECT count(*) FROM sisy.flow_run_members j
           JOIN sisy.runs fb ON fb.flow_run_id = j.flow_run_id AND fb.job_name = 'f-fallback'
          WHERE j.job = 'f-join' AND j.outcome = 'failure'
            AND fb.state IN ('skipped', 'cancelled') AND coalesce(fb.error, '') NOT LIKE '%suspended%'",
    )
    .await;
    assert_eq!(
        silent, 0,
        "fallbacks skipped although their upstream failed"
    );
    let states = client
        .query(
            "SELECT state, count(*) FROM sisy.flow_runs GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    eprintln!(
        "chaos flows: {:?}",
        states
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
    );
}

async fn check_invariants(client: &tokio_postgres::Client, starts: &str, tally: &Tally) {
    // A run starts its process at most once.
    let mut started: HashMap<i64, usize> = HashMap::new();
    for line in starts.lines() {
        let id: i64 = line.split(' ').next().unwrap().parse().unwrap();
        *started.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = started.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "runs whose process started more than once: {twice:?}"
    );

    let rows = client
        .query(
            "SELECT id, job_name, scheduled_for, target_host, attempt, state, coalesce(error, ''),
                    missed_count, reason
               FROM sisy.runs ORDER BY job_name, scheduled_for, target_host, attempt",
            &[],
        )
        .await
        .unwrap();
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    // Per occurrence of an `any` job: (attempt, state, error, started) in attempt order.
    type Attempt = (i32, String, String, bool);
    let mut occurrences: BTreeMap<(String, DateTime<Utc>, Option<String>), Vec<Attempt>> =
        BTreeMap::new();
    let mut counted: HashMap<&str, BTreeMap<DateTime<Utc>, i64>> = HashMap::new();
    for row in &rows {
        let (id, job, at, host, attempt, state, error, missed, reason): (
            i64,
            String,
            DateTime<Utc>,
            Option<String>,
            i32,
            String,
            String,
            i64,
            String,
        ) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
            row.get(6),
            row.get(7),
            row.get(8),
        );
        assert!(
            !matches!(state.as_str(), "pending" | "running"),
            "run {id} ended {state}"
        );
        *by_state.entry(state.clone()).or_default() += 1;
        if started.contains_key(&id) {
            assert!(
                matches!(
                    state.as_str(),
                    "succeeded" | "failed" | "timed_out" | "killed" | "lost"
                ),
                "run {id} started a process but is recorded {state}"
            );
        }
        if let Some((name, _)) = COUNTED.iter().find(|(n, _)| *n == job)
            && reason == "schedule"
        {
            *counted.entry(name).or_default().entry(at).or_default() += missed;
        }
        occurrences.entry((job, at, host)).or_default().push((
            attempt,
            state,
            error,
            started.contains_key(&id),
        ));
    }

    // No occurrence ran twice apart from documented retries.
    let mut ran_again = 0;
    for ((job, at, host), attempts) in &occurrences {
        let ran: Vec<&Attempt> = attempts.iter().filter(|a| a.3).collect();
        for pair in ran.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            let documented = matches!(earlier.1.as_str(), "failed" | "timed_out" | "lost")
                || (earlier.1 == "killed" && earlier.2.contains("guardian shutdown"));
            assert!(
                documented,
                "{job} at {at} ({host:?}) ran attempt {} after attempt {} ended {} ({})",
                later.0, earlier.0, earlier.1, earlier.2
            );
            ran_again += 1;
        }
    }

    // Every occurrence of the counted jobs has a record, with no gap.
    let mut covered = 0;
    for (job, period) in COUNTED {
        let Some(seen) = counted.get(job) else {
            panic!("{job} never ran");
        };
        let (first, last) = (
            *seen.keys().next().unwrap(),
            *seen.keys().next_back().unwrap(),
        );
        let expected = (last - first).num_seconds() / period + 1;
        let recorded: i64 = seen.values().sum();
        assert_eq!(
            recorded, expected,
            "{job}: {recorded} occurrences recorded between {first} and {last}, expected {expected}"
        );
        covered += recorded;
    }

    let total: usize = occurrences.len();
    let processes = started.len();
    eprintln!(
        "chaos: {} SIGKILLs, {} SIGSTOPs, {} database restart; {total} occurrences \
         ({covered} of every-second/-two-seconds jobs, gap-free), {} runs {by_state:?}, \
         {processes} processes started, {ran_again} documented re-runs",
        tally.kills,
        tally.pauses,
        tally.db_restarts,
        rows.len()
    );
    assert!(total >= 200, "only {total} occurrences");
    assert!(tally.kills + tally.pauses > 0, "no chaos happened");
}

-- 0003: the monitoring views of SPEC §2. Plain views over the tables: any SQL client (and
-- `sisy status`) reads them; they cost an index lookup per job, not a scan of history.

-- One row per job: its definition's key facts, its last run, its health.
CREATE VIEW sisy.job_status AS
SELECT j.id, j.name, j.suspended, j.schedule, j.timezone, j.pool, j.target, j.next_due,
       j.schedule_error,
       last.id            AS last_run_id,
       last.state         AS last_state,
       last.scheduled_for AS last_scheduled_for,
       last.started_at    AS last_started_at,
       last.finished_at   AS last_finished_at,
       ok.finished_at     AS last_success_at,
       coalesce(fails.n, 0)   AS consecutive_failures,
       coalesce(running.n, 0) AS running
  FROM sisy.jobs j
  LEFT JOIN LATERAL (
        SELECT id, state, scheduled_for, started_at, finished_at FROM sisy.runs r
         WHERE r.job_id = j.id AND r.state NOT IN ('pending')
         ORDER BY r.id DESC LIMIT 1) last ON true
  LEFT JOIN LATERAL (
        SELECT id, finished_at FROM sisy.runs r
         WHERE r.job_id = j.id AND r.state = 'succeeded'
         ORDER BY r.id DESC LIMIT 1) ok ON true
  LEFT JOIN LATERAL (
        -- Failed attempts since the last success (or ever): what an alert wants to count.
        SELECT count(*) AS n FROM sisy.runs r
         WHERE r.job_id = j.id AND r.id > coalesce(ok.id, 0)
           AND r.state IN ('failed', 'timed_out', 'lost', 'expired')) fails ON true
  LEFT JOIN LATERAL (
        SELECT count(*) AS n FROM sisy.runs r
         WHERE r.job_id = j.id AND r.state = 'running') running ON true;

-- Runs that ended badly in the last 24 hours, newest first.
CREATE VIEW sisy.recent_failures AS
SELECT id, job_name, scheduled_for, attempt, state, host, exit_code, signal, error, finished_at
  FROM sisy.runs
 WHERE state IN ('failed', 'timed_out', 'lost', 'expired', 'killed')
   AND finished_at > now() - interval '24 hours'
 ORDER BY finished_at DESC;

-- Occurrences that never ran: expired (with how many occurrences each row stands for)
-- and skipped ones (overlap = 'forbid').
CREATE VIEW sisy.missed_runs AS
SELECT id, job_name, scheduled_for, state, missed_count, error, finished_at
  FROM sisy.runs
 WHERE state IN ('expired', 'skipped')
 ORDER BY scheduled_for DESC;

-- Jobs whose next occurrence is overdue by more than its ttl: no guardian of the pool is
-- materialising them (none alive, none serving the pool, or all draining).
CREATE VIEW sisy.overdue_jobs AS
SELECT name, pool, schedule, next_due, now() - next_due AS overdue_by
  FROM sisy.jobs
 WHERE NOT suspended AND schedule_error IS NULL AND next_due < now() - ttl;

-- Hosts with their liveness.
CREATE VIEW sisy.host_status AS
SELECT name, pools, version, started_at, last_seen, lease_until, capacity, running, draining,
       lease_until >= now() AS alive
  FROM sisy.hosts;

CREATE VIEW sisy.dead_hosts AS
SELECT name, pools, last_seen, lease_until, now() - last_seen AS silent_for
  FROM sisy.hosts
 WHERE lease_until < now();

-- What runs right now, with how long and how fresh its heartbeat is.
CREATE VIEW sisy.running_runs AS
SELECT id, job_name, host, pid, attempt, scheduled_for, started_at,
       now() - started_at AS runtime, now() - heartbeat_at AS heartbeat_age, kill_requested_at
  FROM sisy.runs
 WHERE state = 'running'
 ORDER BY started_at;

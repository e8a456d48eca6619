-- The dashboard's jobs page: one page of jobs in name order after $1 (keyset paging through
-- the jobs' unique name index), whose name contains $2 when given, with what a person checks
-- first: the last finished run, the last success, the failing streak, what runs now.
-- The streak counts the failed attempts since the last success, as sisy.job_status does, but
-- stops at 1,000 (shown as "1000+"): a job that has failed for a year is not counted run by
-- run on every page view. Each lateral is an index read on runs_job or runs_running.
--   $1 after this name (NULL: from the start)  $2 name contains (NULL: all)  $3 page size
SELECT jsonb_build_object(
           'name', j.name, 'schedule', j.schedule, 'timezone', j.timezone, 'pool', j.pool,
           'target', j.target, 'suspended', j.suspended, 'next_due', j.next_due,
           'schedule_error', j.schedule_error, 'is_root', j.is_root,
           'last_id', last.id, 'last_state', last.state, 'last_finished_at', last.finished_at,
           'last_exit_code', last.exit_code, 'last_success_at', ok.finished_at,
           'failing', fails.n, 'running', running.n)
  FROM (SELECT id, name, schedule, timezone, pool, target, suspended, next_due, schedule_error,
               EXISTS (SELECT 1 FROM sisy.dependencies d WHERE d.upstream = jobs.name)
               AND NOT EXISTS (SELECT 1 FROM sisy.dependencies d WHERE d.job = jobs.name) AS is_root
          FROM sisy.jobs
         WHERE ($1::text IS NULL OR name > $1)
           AND ($2::text IS NULL OR strpos(lower(name), lower($2)) > 0)
         ORDER BY name
         LIMIT $3) j
  LEFT JOIN LATERAL (
        SELECT r.id, r.state, r.finished_at, r.exit_code FROM sisy.runs r
         WHERE r.job_id = j.id AND r.state NOT IN ('pending', 'running')
         ORDER BY r.id DESC LIMIT 1) last ON true
  LEFT JOIN LATERAL (
        SELECT r.id, r.finished_at FROM sisy.runs r
         WHERE r.job_id = j.id AND r.state = 'succeeded'
         ORDER BY r.id DESC LIMIT 1) ok ON true
  LEFT JOIN LATERAL (
        SELECT count(*) AS n FROM (
            SELECT 1 FROM sisy.runs r
             WHERE r.job_id = j.id AND r.id > coalesce(ok.id, 0)
               AND r.state IN ('failed', 'timed_out', 'lost', 'expired')
             LIMIT 1000) f) fails ON true
  LEFT JOIN LATERAL (
        SELECT count(*) AS n FROM sisy.runs r
         WHERE r.job_id = j.id AND r.state = 'running') running ON true
 ORDER BY j.name

-- The dispatcher's look at the world, one statement: expire pending runs of these pools whose
-- deadline passed, then say what there is to do and when the next thing falls due.
--   $1 pools  $2 host
-- Its cost follows what is due, not the size of the tables: the expiry reads only pending
-- runs already due (a deadline is due_at + ttl and ttl is positive, so a run whose deadline
-- passed is due); the next run and the next job are the first of each pool in
-- runs_pending_due and jobs_pool_next_due (LATERAL, as in runs_claim.sql: overdue jobs and
-- runs of pools this guardian does not serve are never read). `flow_due_in` is when the flows'
-- safety net has something to do (a flow run's deadline, a recheck): two index lookups.
WITH expired AS (
    UPDATE sisy.runs
       SET state = 'expired', finished_at = now(),
           error = format('not started before its deadline %s (no free guardian of pool %s in time)',
                          deadline, pool)
     WHERE state = 'pending' AND due_at <= now() AND deadline <= now() AND pool = ANY ($1)
 RETURNING id
), next_job AS (
    SELECT min(first.next_due) AS at
      FROM unnest($1::text[]) AS p (pool)
     CROSS JOIN LATERAL (
        SELECT next_due FROM sisy.jobs
         WHERE pool = p.pool AND next_due IS NOT NULL AND NOT suspended AND schedule_error IS NULL
         ORDER BY next_due
         LIMIT 1
     ) first
), next_run AS (
    SELECT min(first.due_at) AS at
      FROM unnest($1::text[]) AS p (pool)
     CROSS JOIN LATERAL (
        SELECT due_at FROM sisy.runs
         WHERE state = 'pending' AND pool = p.pool AND deadline > now()
           AND (target_host IS NULL OR target_host = $2)
         ORDER BY due_at
         LIMIT 1
     ) first
)
SELECT (SELECT count(*) FROM expired) AS expired,
       -- The first unseen job in id order, not EXISTS: ordered, the index jobs_unseen is the
       -- one cheap plan whatever the statistics say. EXISTS let the planner pick a scan of
       -- the whole table when the statistics still counted the jobs unseen (right after
       -- 100,000 were imported and seeded: 28 ms a tick until the next ANALYZE).
       (SELECT id FROM sisy.jobs
         WHERE next_due IS NULL AND schedule IS NOT NULL AND schedule_error IS NULL
         ORDER BY id LIMIT 1) IS NOT NULL AS unseen,
       -- An infinite next_due (a row's value, not the guardians') cannot be subtracted
       -- from: it is due at once (and flagged by the scheduler) or never.
       (SELECT CASE WHEN at IS NULL THEN NULL WHEN isfinite(at) THEN extract(epoch FROM at - now())
                    WHEN at < now() THEN -1 ELSE 1e9 END FROM next_job)::float8 AS job_due_in,
       (SELECT CASE WHEN at IS NULL THEN NULL WHEN isfinite(at) THEN extract(epoch FROM at - now())
                    WHEN at < now() THEN -1 ELSE 1e9 END FROM next_run)::float8 AS run_due_in,
       sisy.flows_due_in() AS flow_due_in

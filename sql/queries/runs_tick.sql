-- The dispatcher's look at the world, one statement: expire pending runs of these pools whose
-- deadline passed, then say what there is to do and when the next thing falls due, and which
-- runs held here have a kill request.
--   $1 pools  $2 host
-- Its cost follows what is due, not the size of the tables: the expiry reads only pending
-- runs already due (a deadline is due_at + ttl and ttl is positive, so a run whose deadline
-- passed is due); the next run and the next job are the first of each pool in
-- runs_pending_due and jobs_pool_next_due (LATERAL, as in runs_claim.sql: overdue jobs and
-- runs of pools this guardian does not serve are never read). `flow_due_in` is when the flows'
-- safety net has something to do (a flow run's deadline, a recheck): two index lookups.
--
-- Waiting for max_concurrency never makes a run expire: an overdue pending run of a capped
-- job whose slots are all taken (as many running runs as the cap), or were until a run of it
-- ended less than a ttl ago, gets its deadline moved to now() + ttl instead (`held`): its ttl
-- counts again from the last moment the cap held it back. Only a run that saw a free slot
-- for a whole ttl without a guardian taking it expires, as any other run does. Checked once
-- per job with overdue runs, through runs_running (a few rows) and runs_job.
WITH overdue AS MATERIALIZED (
    -- Read once (the expiry and `held` below share it): normally no row.
    SELECT id, job_id FROM sisy.runs
     WHERE state = 'pending' AND due_at <= now() AND deadline <= now() AND pool = ANY ($1)
), held AS (
    SELECT j.id, least(j.ttl, interval '100 years') AS ttl
      FROM sisy.jobs j
     WHERE j.id IN (SELECT job_id FROM overdue) AND j.max_concurrency IS NOT NULL
       AND (j.max_concurrency <= (SELECT count(*) FROM sisy.runs x
                                   WHERE x.job_id = j.id AND x.state = 'running')
            OR EXISTS (SELECT 1 FROM sisy.runs x
                        WHERE x.job_id = j.id AND x.started_at IS NOT NULL
                          AND x.finished_at > now() - j.ttl))
), kept AS (
    -- The row is re-checked under its lock (claimed meanwhile: left alone), as below.
    UPDATE sisy.runs r SET deadline = now() + held.ttl
      FROM overdue o JOIN held ON held.id = o.job_id
     WHERE r.id = o.id AND r.state = 'pending' AND r.deadline <= now()
), expired AS (
    UPDATE sisy.runs r
       SET state = 'expired', finished_at = now(),
           error = format('not started before its deadline %s (no free guardian of pool %s in time)',
                          r.deadline, r.pool)
      FROM overdue o
     WHERE r.id = o.id AND r.state = 'pending' AND r.deadline <= now()
       AND (o.job_id IS NULL OR o.job_id NOT IN (SELECT id FROM held))
 RETURNING r.id
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
        SELECT due_at FROM sisy.runs c
         WHERE state = 'pending' AND pool = p.pool AND deadline > now()
           AND (target_host IS NULL OR target_host = $2)
           -- As in runs_claim.sql: a run held back by max_concurrency is no reason to look
           -- again before a run of its job ends (which wakes the guardians).
           AND (c.job_id IS NULL OR c.job_id NOT IN (
                SELECT x.job_id FROM sisy.runs x JOIN sisy.jobs j ON j.id = x.job_id
                 WHERE x.state = 'running' AND j.max_concurrency IS NOT NULL
                 GROUP BY x.job_id, j.max_concurrency HAVING count(*) >= j.max_concurrency))
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
       sisy.flows_due_in() AS flow_due_in,
       -- The runs running here with a kill request (index runs_kill_requested: normally no
       -- row). Without LISTEN, this is how a kill reaches the process within a poll.
       (SELECT coalesce(array_agg(id), '{}') FROM sisy.runs
         WHERE state = 'running' AND host = $2 AND kill_requested_at IS NOT NULL) AS kill_requested

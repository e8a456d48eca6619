-- The dispatcher's look at the world, one statement: expire pending runs of these pools whose
-- deadline passed, then say what there is to do and when the next thing falls due.
--   $1 pools  $2 host
WITH expired AS (
    UPDATE sisy.runs
       SET state = 'expired', finished_at = now(),
           error = format('not started before its deadline %s (no free guardian of pool %s in time)',
                          deadline, pool)
     WHERE state = 'pending' AND deadline <= now() AND pool = ANY ($1)
 RETURNING id
), next_job AS (
    SELECT min(next_due) AS at FROM sisy.jobs
     WHERE NOT suspended AND schedule_error IS NULL AND pool = ANY ($1)
), next_run AS (
    SELECT min(due_at) AS at FROM sisy.runs
     WHERE state = 'pending' AND pool = ANY ($1) AND (target_host IS NULL OR target_host = $2)
       AND deadline > now()
)
SELECT (SELECT count(*) FROM expired) AS expired,
       EXISTS (SELECT 1 FROM sisy.jobs
                WHERE next_due IS NULL AND schedule IS NOT NULL AND schedule_error IS NULL) AS unseen,
       extract(epoch FROM (SELECT at FROM next_job) - now())::float8 AS job_due_in,
       extract(epoch FROM (SELECT at FROM next_run) - now())::float8 AS run_due_in

-- The claim: the one statement through which a run becomes this host's. SKIP LOCKED lets any
-- number of guardians claim at once without waiting on each other or taking the same run.
--   $1 host  $2 pools  $3 free capacity
WITH picked AS (
    SELECT id FROM sisy.runs
     WHERE state = 'pending' AND pool = ANY ($2) AND due_at <= now() AND deadline > now()
       AND (target_host IS NULL OR target_host = $1)
       AND NOT coalesce((SELECT draining FROM sisy.hosts WHERE name = $1), true)
     ORDER BY due_at, id
     LIMIT $3
       FOR UPDATE SKIP LOCKED
)
UPDATE sisy.runs r
   SET state = 'running', host = $1, claimed_at = now(), heartbeat_at = now()
  FROM picked, sisy.jobs j
 WHERE r.id = picked.id AND j.id = r.job_id
RETURNING r.id, r.job_id, r.job_name, r.scheduled_for, r.attempt, r.target_host, r.due_at,
          j.command, j.run_as, j.env, j.workdir, j.overlap,
          extract(epoch FROM j.max_runtime)::float8 AS max_runtime,
          extract(epoch FROM j.kill_grace)::float8 AS kill_grace

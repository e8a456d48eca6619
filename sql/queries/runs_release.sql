-- Admission under the job lock: claimed runs that the job's max_concurrency holds back go
-- back to `pending` as if never claimed (no host, no claim time), to be claimed again when a
-- run of the job ends. Only runs this host claimed and never started.
--   $1 run ids  $2 host
UPDATE sisy.runs
   SET state = 'pending', host = NULL, claimed_at = NULL, heartbeat_at = NULL
 WHERE id = ANY ($1) AND state = 'running' AND host = $2 AND started_at IS NULL
RETURNING id

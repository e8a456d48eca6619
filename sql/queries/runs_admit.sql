-- The runs this host starts now: started_at is the database clock at the start, this
-- statement's (not its transaction's, which began before the job lock was granted: a run
-- admitted into the slot another run's end freed must not seem to start before that end). A run whose
-- kill was requested while it waited (sisy.kill, or replaced by a newer run) is not started:
-- it ends `killed` here, its error saying its process never ran. A claimed run is `running`
-- in the table, so a kill ends it as it ends any running run (`killed`, not `cancelled`,
-- which is for runs no host had taken), and the kill having been asked for, it is not retried.
-- One UPDATE decides per row: a sisy.kill committed meanwhile is seen (the row is re-read
-- under its lock), so a run is either started or killed, never both and never neither.
--   $1 run ids  $2 host
UPDATE sisy.runs
   SET started_at = CASE WHEN kill_requested_at IS NULL THEN statement_timestamp() END,
       state = CASE WHEN kill_requested_at IS NULL THEN state ELSE 'killed' END,
       finished_at = CASE WHEN kill_requested_at IS NULL THEN NULL ELSE now() END,
       error = CASE WHEN kill_requested_at IS NULL THEN error
               ELSE coalesce(error, 'killed on request') || ' before it started (its process never ran)' END
 WHERE id = ANY ($1) AND state = 'running' AND host = $2
-- A hand-written run may have an infinite due_at: no latency then, rather than a failed
-- admission of every run claimed with it.
RETURNING id, CASE WHEN isfinite(due_at) THEN extract(epoch FROM (statement_timestamp() - due_at)) END::float8 AS latency,
          kill_requested_at IS NOT NULL AS killed

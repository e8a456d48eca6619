-- Housekeeping: deletes one small batch of finished runs older than the retention. Small
-- batches keep locks short; SKIP LOCKED lets several guardians prune without contending.
-- Runs of a flow run that still runs stay, however old: its members' outcomes and results
-- are read from them (SPEC §7).
--   $1 retention seconds  $2 batch size
WITH old AS (
    SELECT id FROM sisy.runs
     WHERE finished_at < now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM sisy.flow_runs f
                        WHERE f.id = runs.flow_run_id AND f.state = 'running')
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
DELETE FROM sisy.runs r USING old WHERE r.id = old.id

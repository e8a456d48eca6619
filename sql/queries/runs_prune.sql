-- Housekeeping: deletes one small batch of finished runs older than the retention. Small
-- batches keep locks short; SKIP LOCKED lets several guardians prune without contending.
-- The runs of a flow run still running are kept, however old: its members' outcomes and
-- results are read from them.
--   $1 retention seconds  $2 batch size
WITH old AS (
    SELECT id FROM sisy.runs
     WHERE finished_at < now() - make_interval(secs => $1)
       AND (flow_run_id IS NULL
            OR NOT EXISTS (SELECT 1 FROM sisy.flow_runs f WHERE f.id = flow_run_id AND f.state = 'running'))
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
DELETE FROM sisy.runs r USING old WHERE r.id = old.id

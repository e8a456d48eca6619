-- Housekeeping: deletes one small batch of ended flow runs older than the retention, with
-- their snapshots (ON DELETE CASCADE); runs left of them keep their history without the link.
--   $1 retention seconds  $2 batch size
WITH old AS (
    SELECT id FROM sisy.flow_runs
     WHERE finished_at < now() - make_interval(secs => $1) AND state <> 'running'
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
DELETE FROM sisy.flow_runs f USING old WHERE f.id = old.id

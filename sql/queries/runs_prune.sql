-- Housekeeping: deletes one small batch of finished runs older than the retention. Small
-- batches keep locks short; SKIP LOCKED lets several guardians prune without contending.
--   $1 retention seconds  $2 batch size
WITH old AS (
    SELECT id FROM sisy.runs
     WHERE finished_at < now() - make_interval(secs => $1)
     LIMIT $2
       FOR UPDATE SKIP LOCKED
)
DELETE FROM sisy.runs r USING old WHERE r.id = old.id

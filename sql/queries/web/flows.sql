-- The dashboard's flows page: one page of flow runs, newest first, older than $1 (keyset on
-- the primary key), of root $2 when given; each with its members counted by state
-- (sisy.flow_status), computed for the rows shown only.
--   $1 before this id  $2 root job  $3 page size
SELECT to_jsonb(x) FROM (
    SELECT s.id, s.root_job, s.scheduled_for, s.state, s.started_at, s.finished_at,
           s.members, s.waiting, s.pending, s.running, s.succeeded, s.failed, s.skipped,
           s.failed_members, s.error
      FROM sisy.flow_status s
     WHERE s.id IN (SELECT id FROM sisy.flow_runs
                     WHERE ($1::bigint IS NULL OR id < $1)
                       AND ($2::text IS NULL OR root_job = $2)
                     ORDER BY id DESC
                     LIMIT $3)
     ORDER BY s.id DESC) x

-- `sisy flows list`: flow runs newest first, one row of sisy.flow_status each. The flow runs
-- are chosen (and limited) on the table first, so the view's per-run counts are computed
-- for the rows shown only. The dashboard's flows page pages with $4 (keyset on the id).
--   $1 root job  $2 state  $3 limit  $4 older than this flow run (NULL: the newest)
SELECT to_jsonb(x) FROM (
    SELECT s.id, s.root_job, s.scheduled_for, s.state, s.started_at, s.finished_at,
           s.members, s.waiting, s.pending, s.running, s.succeeded, s.failed, s.skipped,
           s.failed_members, s.error
      FROM sisy.flow_status s
     WHERE s.id IN (SELECT id FROM sisy.flow_runs
                     WHERE ($1::text IS NULL OR root_job = $1)
                       AND ($2::text IS NULL OR state = $2)
                       AND ($4::bigint IS NULL OR id < $4)
                     ORDER BY id DESC
                     LIMIT $3)
     ORDER BY s.id DESC) x

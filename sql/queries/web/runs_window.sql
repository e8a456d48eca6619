-- The dashboard's runs page with a time window: the runs that finished in [$5, $6), the
-- latest finish first, a page at a time (keyset: finished before $9, or at $9 with an id
-- below $1), through runs_finished. Ordered by id, as web/runs.sql is, the planner walked
-- the primary key backwards expecting ids and finish times to go together: 143 ms for an
-- hour three days back among 1,000,000 runs, 0.2 ms this way. The other filters as there.
--   $1 before this id (with $9)  $2 job id  $3 state  $4 host  $5 finished at or after
--   $6 finished before  $7 page size  $8 job name (a job that no longer exists)
--   $9 finished at or before (the last row of the previous page)
SELECT to_jsonb(x) FROM (
    SELECT r.id, r.job_name, r.attempt, r.reason, r.state, r.host, r.target_host,
           r.scheduled_for, r.started_at, r.finished_at, r.exit_code, r.signal,
           left(r.error, 300) AS error, r.item_index, r.flow_run_id, r.missed_count
      FROM sisy.runs r
     WHERE r.finished_at >= coalesce($5::timestamptz, '-infinity')
       AND r.finished_at < coalesce($6::timestamptz, 'infinity')
       AND ($9::timestamptz IS NULL OR (r.finished_at, r.id) < ($9, coalesce($1::bigint, 0)))
       AND ($2::bigint IS NULL OR r.job_id = $2)
       AND ($8::text IS NULL OR r.job_name = $8)
       AND ($3::text IS NULL OR r.state = $3)
       AND ($4::text IS NULL OR r.host = $4)
     ORDER BY r.finished_at DESC, r.id DESC
     LIMIT $7) x

-- The dashboard's runs page for one host ($4): the runs that ran or run there, newest first,
-- older than run $1, with the other filters of web/runs.sql. Its running runs through
-- runs_running_host, its finished ones through runs_host (schema 20), which holds finished
-- versions only (one entry a run on the guardians' write path): each branch keeps the
-- predicate of its index, and the page is the newest of both.
--   $1 before this id  $2 job id  $3 state  $4 host  $5, $6 unused (NULL)  $7 page size
--   $8 job name (a job that no longer exists)  $9 unused (NULL)
SELECT to_jsonb(x) FROM (
    SELECT * FROM (
        (SELECT r.id, r.job_name, r.attempt, r.reason, r.state, r.host, r.target_host,
                r.scheduled_for, r.started_at, r.finished_at, r.exit_code, r.signal,
                left(r.error, 300) AS error, r.item_index, r.flow_run_id, r.missed_count
           FROM sisy.runs r
          WHERE r.host = $4 AND r.state = 'running'
            AND ($1::bigint IS NULL OR r.id < $1)
            AND ($2::bigint IS NULL OR r.job_id = $2)
            AND ($8::text IS NULL OR r.job_name = $8)
            AND ($3::text IS NULL OR r.state = $3)
          ORDER BY r.id DESC
          LIMIT $7)
        UNION ALL
        (SELECT r.id, r.job_name, r.attempt, r.reason, r.state, r.host, r.target_host,
                r.scheduled_for, r.started_at, r.finished_at, r.exit_code, r.signal,
                left(r.error, 300) AS error, r.item_index, r.flow_run_id, r.missed_count
           FROM sisy.runs r
          WHERE r.host = $4 AND r.host IS NOT NULL AND r.state NOT IN ('pending', 'running')
            AND ($1::bigint IS NULL OR r.id < $1)
            AND ($2::bigint IS NULL OR r.job_id = $2)
            AND ($8::text IS NULL OR r.job_name = $8)
            AND ($3::text IS NULL OR r.state = $3)
          ORDER BY r.id DESC
          LIMIT $7)
    ) both_kinds
     WHERE $5::timestamptz IS NULL AND $6::timestamptz IS NULL AND $9::timestamptz IS NULL
     ORDER BY id DESC
     LIMIT $7) x

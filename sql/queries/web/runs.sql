-- The dashboard's runs page: one page of runs, newest first, older than run $1 (keyset
-- paging on the primary key), filtered by job and state (with a host: web/runs_host.sql;
-- with a time window: web/runs_window.sql). Each filter takes the index that answers it: a
-- job's runs through runs_job (by the job's id, which the page looks up first:
-- web/job_id.sql; a removed job's runs by name), a state of a bad outcome through
-- runs_outcome (schema 20), running ones through runs_running, pending ones through
-- runs_pending. Without a filter, or for succeeded runs, the newest rows of the primary key.
-- The output is not read here (the run page shows it).
--   $1 before this id  $2 job id  $3 state  $4 host, $5, $6, $9 the time window (NULL
--   here: web/runs_host.sql, web/runs_window.sql)  $7 page size  $8 job name (a job that no
--   longer exists)
SELECT to_jsonb(x) FROM (
    SELECT r.id, r.job_name, r.attempt, r.reason, r.state, r.host, r.target_host,
           r.scheduled_for, r.started_at, r.finished_at, r.exit_code, r.signal,
           left(r.error, 300) AS error, r.item_index, r.flow_run_id, r.missed_count
      FROM sisy.runs r
     WHERE ($1::bigint IS NULL OR r.id < $1)
       AND ($2::bigint IS NULL OR r.job_id = $2)
       AND ($8::text IS NULL OR r.job_name = $8)
       AND ($3::text IS NULL OR r.state = $3)
       -- The host's and the window's statements are others.
       AND $4::text IS NULL AND $5::timestamptz IS NULL AND $6::timestamptz IS NULL
       AND $9::timestamptz IS NULL
     ORDER BY r.id DESC
     LIMIT $7) x

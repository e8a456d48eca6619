--   $1 job  $2 state  $3 host  $4 since (timestamp)  $5 since (seconds ago)  $6 limit
SELECT to_jsonb(x) FROM (
    SELECT id, job_name, attempt, reason, state, host, scheduled_for, started_at, finished_at,
           exit_code, signal, error, item_index, item
      FROM sisy.runs
     WHERE ($1::text IS NULL OR job_name = $1)
       AND ($2::text IS NULL OR state = $2)
       AND ($3::text IS NULL OR host = $3 OR target_host = $3)
       AND ($4::timestamptz IS NULL OR scheduled_for >= $4)
       AND ($5::float8 IS NULL OR scheduled_for >= now() - make_interval(secs => $5))
     ORDER BY id DESC
     LIMIT $6) x

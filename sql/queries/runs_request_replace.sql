-- overlap = 'replace': ask the guardians of the running runs to kill them.
WITH victims AS (
    UPDATE sisy.runs
       SET kill_requested_at = coalesce(kill_requested_at, now()),
           error = coalesce(error, format('killed to make way for run %s (overlap = replace)', $2::bigint))
     WHERE id = ANY ($1) AND state = 'running'
 RETURNING id
)
SELECT pg_notify('sisy_kill', id::text) FROM victims

-- Records how several runs of this host ended, in one statement: runs_finish.sql for each
-- (the same rules, the same columns), so that a guardian ending many short runs writes them
-- together rather than one statement, one commit and one statement-level trigger each.
-- The statement never waits: it takes the rows it can lock at once (SKIP LOCKED, in id
-- order) and writes those. So it can never be one side of a deadlock with a statement that
-- locks several of the same rows in another order (this host's heartbeat). A run not
-- returned was not written (locked by another statement that moment, or declared lost
-- meanwhile): the recorder writes it alone (runs_finish.sql, then runs_note.sql).
--   $1 ids  $2 host  $3 states  $4 exit codes  $5 signals  $6 outputs  $7 output bytes
--   $8 errors  $9 no_retry  $10 pids  $11 results (JSON text as the jobs wrote it, or NULL)
--   $12 seconds since each job's process started (or NULL; see runs_finish.sql)
WITH locked AS (
    SELECT id FROM sisy.runs
     WHERE id = ANY ($1::bigint[]) AND host = $2
     ORDER BY id
       FOR UPDATE SKIP LOCKED
), e AS (
    SELECT * FROM unnest($1::bigint[], $3::text[], $4::int[], $5::int[], $6::text[],
                         $7::bigint[], $8::text[], $9::bool[], $10::int[], $11::text[],
                         $12::float8[])
               AS u(id, state, exit_code, signal, output, output_bytes, error, no_retry,
                    pid, result, started_ago)
)
UPDATE sisy.runs r
   SET state = e.state, exit_code = e.exit_code, signal = e.signal, output = e.output,
       output_bytes = e.output_bytes,
       -- Called only for a result: the function's exception block costs a subtransaction.
       result = CASE WHEN e.result IS NOT NULL THEN sisy.result_jsonb(e.result) END,
       pid = coalesce(e.pid, r.pid),
       started_at = CASE WHEN r.state = 'running' AND e.started_ago IS NOT NULL
                         THEN least(statement_timestamp(),
                                    greatest(r.started_at, statement_timestamp() - make_interval(secs => e.started_ago)))
                         ELSE r.started_at END,
       error = CASE WHEN e.state = 'killed' THEN coalesce(r.error, e.error) ELSE e.error END,
       no_retry = e.no_retry,
       finished_at = CASE WHEN r.state = 'running' THEN now() ELSE r.finished_at END
  FROM locked, e
 WHERE r.id = locked.id AND e.id = locked.id AND r.host = $2
   AND (r.state = 'running'
        OR (e.state <> 'lost' AND r.state = e.state AND r.exit_code IS NOT DISTINCT FROM e.exit_code
            AND r.signal IS NOT DISTINCT FROM e.signal))
RETURNING r.id

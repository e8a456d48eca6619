-- Records how a run ended. Only a run still running on this host is written: a run declared
-- lost in the meantime keeps that verdict (see runs_note.sql). Writing the same result twice
-- is harmless (a write whose answer was lost to a broken connection is simply repeated):
-- the second finds the row already so and changes nothing that matters.
-- The pid is written here too: a run shorter than a heartbeat would otherwise have none.
-- `started_at` becomes when the job's process started, as its run shim reported it: sent as
-- how long ago that was, by the host's clock, and placed on the database clock from this
-- statement's own instant (so a host whose clock is off by minutes still writes the right
-- time, within the round trip); never before the admission instant it held until then (the
-- process started after it), never after now. A run whose process never started keeps the
-- admission instant.
-- runs_finish_many.sql is this statement for several runs at once; keep the two alike.
--   $1 id  $2 host  $3 state  $4 exit code  $5 signal  $6 output  $7 output bytes  $8 error
--   $9 no_retry  $10 pid  $11 result (JSON text as the job wrote it, or NULL)
--   $12 seconds since the job's process started (or NULL)
UPDATE sisy.runs
   SET state = $3, exit_code = $4, signal = $5, output = $6, output_bytes = $7,
       -- Called only for a result: the function's exception block costs a subtransaction.
       result = CASE WHEN $11::text IS NOT NULL THEN sisy.result_jsonb($11::text) END,
       pid = coalesce($10, pid),
       started_at = CASE WHEN state = 'running' AND $12::float8 IS NOT NULL
                         THEN least(statement_timestamp(),
                                    greatest(started_at, statement_timestamp() - make_interval(secs => $12::float8)))
                         ELSE started_at END,
       error = CASE WHEN $3 = 'killed' THEN coalesce(error, $8) ELSE $8 END,
       no_retry = $9, finished_at = CASE WHEN state = 'running' THEN now() ELSE finished_at END
 WHERE id = $1 AND host = $2
   AND (state = 'running'
        OR ($3 <> 'lost' AND state = $3 AND exit_code IS NOT DISTINCT FROM $4
            AND signal IS NOT DISTINCT FROM $5))
RETURNING id

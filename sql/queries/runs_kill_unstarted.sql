-- Admission under the job lock, first: claimed runs whose kill was requested while they
-- waited end `killed` before any overlap rule is applied to them (a killed run must not
-- skip, or ask to replace, anything). See runs_admit.sql for the state chosen.
--   $1 run ids  $2 host
UPDATE sisy.runs
   SET state = 'killed', finished_at = now(),
       error = coalesce(error, 'killed on request') || ' before it started (its process never ran)'
 WHERE id = ANY ($1) AND state = 'running' AND host = $2 AND started_at IS NULL
   AND kill_requested_at IS NOT NULL
RETURNING id

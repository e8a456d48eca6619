-- The runs this host starts now: started_at is the database clock at the start.
UPDATE sisy.runs SET started_at = now()
 WHERE id = ANY ($1) AND state = 'running' AND host = $2
-- A hand-written run may have an infinite due_at: no latency then, rather than a failed
-- admission of every run claimed with it.
RETURNING id, CASE WHEN isfinite(due_at) THEN extract(epoch FROM (now() - due_at)) END::float8 AS latency

-- The runs this host starts now: started_at is the database clock at the start.
UPDATE sisy.runs SET started_at = now()
 WHERE id = ANY ($1) AND state = 'running' AND host = $2
RETURNING id, extract(epoch FROM (now() - due_at))::float8 AS latency

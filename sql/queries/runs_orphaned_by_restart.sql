-- At start-up: runs this host's previous process left running are lost (that process is gone).
UPDATE sisy.runs
   SET state = 'lost', finished_at = now(),
       error = format('the guardian on %s restarted while the run was in progress', $1::text)
 WHERE host = $1 AND state = 'running'

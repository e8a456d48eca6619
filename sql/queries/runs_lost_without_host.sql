-- Housekeeping: running runs whose host has no row in sisy.hosts (a row written by hand, or
-- deleted before migration 0013's trigger existed) are declared lost. The heartbeat's rescue
-- finds dead hosts through their rows, so nobody else would ever end these runs. Through
-- runs_running_host: it reads the running runs, every ten minutes, not at every beat.
UPDATE sisy.runs r
   SET state = 'lost', finished_at = now(),
       error = format('its host %s has no row in sisy.hosts: no guardian holds this run', quote_literal(r.host))
 WHERE r.state = 'running' AND r.host IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM sisy.hosts h WHERE h.name = r.host)

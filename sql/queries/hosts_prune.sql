-- Housekeeping: forgets hosts dead for longer than the retention that have no running runs.
DELETE FROM sisy.hosts h
 WHERE h.lease_until < now() - make_interval(secs => $1)
   AND NOT EXISTS (SELECT 1 FROM sisy.runs r WHERE r.host = h.name AND r.state = 'running')

-- Hosts that take new work: the targets of an `all` job's occurrence.
SELECT name, pools FROM sisy.hosts WHERE lease_until > now() AND NOT draining ORDER BY name

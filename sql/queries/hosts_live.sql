-- Hosts that take new work: the targets of an `all` job's occurrence. NULL elements of
-- `pools` (a hand-written row) are dropped here rather than failing the scheduler's read.
SELECT name, array_remove(pools, NULL) AS pools
  FROM sisy.hosts WHERE lease_until > now() AND NOT draining ORDER BY name

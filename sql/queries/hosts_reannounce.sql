-- The host row is gone (deleted by hand) while this guardian runs: announce it again.
--   $1 host  $2 pools  $3 version  $4 lease seconds  $5 capacity
INSERT INTO sisy.hosts (name, pools, version, lease_until, capacity)
VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)
ON CONFLICT DO NOTHING

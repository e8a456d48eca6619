-- The host row is gone (deleted by hand) while this guardian runs: announce it again, under
-- the same incarnation (`started_at`, see hosts_register.sql).
--   $1 host  $2 pools  $3 version  $4 lease seconds  $5 capacity  $6 incarnation
INSERT INTO sisy.hosts (name, pools, version, lease_until, capacity, started_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6)
ON CONFLICT DO NOTHING

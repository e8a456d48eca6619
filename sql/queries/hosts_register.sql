-- A guardian announces itself. `draining` survives a restart: an operator drained the host,
-- not the process. Returns `draining` and `incarnation` (the row's new `started_at`, which
-- names this process in its heartbeats) when this process now holds the host's lease, NULLs
-- when another process does, and that lease's end when this statement saw it.
-- Two processes registering one name at once: the second's INSERT waits on the first's
-- row, then its DO UPDATE re-checks the lease on the committed row (the WHERE below), so
-- it cannot take over a live lease it did not see in `previous`.
WITH previous AS (
    SELECT lease_until > now() AS held, lease_until FROM sisy.hosts WHERE name = $1
), upsert AS (
    INSERT INTO sisy.hosts AS h (name, pools, version, started_at, last_seen, lease_until, capacity, running)
    SELECT $1, $2, $3, now(), now(), now() + make_interval(secs => $4), $5, 0
     WHERE NOT coalesce((SELECT held FROM previous), false)
    ON CONFLICT (name) DO UPDATE
       SET pools = excluded.pools, version = excluded.version, started_at = excluded.started_at,
           last_seen = excluded.last_seen, lease_until = excluded.lease_until,
           capacity = excluded.capacity, running = 0
     WHERE h.lease_until <= now()
    RETURNING draining, started_at
)
SELECT (SELECT draining FROM upsert) AS draining,
       (SELECT started_at FROM upsert) AS incarnation,
       (SELECT lease_until FROM previous WHERE held) AS held_until

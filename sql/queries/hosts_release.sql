-- A guardian that stops cleanly gives up its lease at once, so that a restart need not wait,
-- and the rescue lease if it holds it, so that the next guardian to beat takes it over.
-- Only its own ($2, its incarnation): a process whose name was taken over while it was
-- paused must not release the lease of the process that now holds the name.
WITH me AS (
    UPDATE sisy.hosts SET lease_until = now(), last_seen = now(), running = 0
     WHERE name = $1 AND started_at = $2
 RETURNING name
)
UPDATE sisy.leases SET until = now()
 WHERE holder = $1 AND EXISTS (SELECT 1 FROM me)

-- A guardian that stops cleanly gives up its lease at once, so that a restart need not wait.
-- Only its own ($2, its incarnation): a process whose name was taken over while it was
-- paused must not release the lease of the process that now holds the name.
UPDATE sisy.hosts SET lease_until = now(), last_seen = now(), running = 0
 WHERE name = $1 AND started_at = $2

-- A guardian that stops cleanly gives up its lease at once, so that a restart need not wait.
UPDATE sisy.hosts SET lease_until = now(), last_seen = now(), running = 0 WHERE name = $1

-- The guardian acting for these pools cannot take their due runs (it is full): a few other
-- live guardians of the pools with free capacity (as their last heartbeat counted it) are
-- asked to look, by name (the listener forwards `sisy_help` for its own host name). Sent at
-- most every 100 ms while the runs wait; guardians without LISTEN find them at their next
-- poll anyway. Reads the host rows (one per host), only when the acting guardian is full.
--   $1 pools  $2 this host
SELECT pg_notify('sisy_help', h.name)
  FROM (SELECT name FROM sisy.hosts
         WHERE pools && $1::text[] AND name <> $2 AND lease_until > now() AND NOT draining
           AND running < capacity
         ORDER BY random()
         LIMIT 4) h

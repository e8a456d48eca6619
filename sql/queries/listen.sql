LISTEN sisy_wakeup; LISTEN sisy_help; LISTEN sisy_kill; LISTEN sisy_hosts
-- The notification channels the guardian listens on (see the listener): wake-ups by pool (for
-- the guardian acting for it; `sisy_help`: a host asked to help by it),
-- kill requests by run id, drain changes by host. The statement comes first: monitoring
-- (and the tests) find the listening sessions by pg_stat_activity.query LIKE 'LISTEN%'.

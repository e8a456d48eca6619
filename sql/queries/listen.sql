LISTEN sisy_wakeup; LISTEN sisy_kill; LISTEN sisy_hosts
-- The notification channels the guardian listens on (see the listener): wake-ups by pool,
-- kill requests by run id, drain changes by host. The statement comes first: monitoring
-- (and the tests) find the listening sessions by pg_stat_activity.query LIKE 'LISTEN%'.

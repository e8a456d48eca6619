-- The notification channels the guardian listens on (see the listener): wake-ups by pool,
-- kill requests by run id, drain changes by host.
LISTEN sisy_wakeup; LISTEN sisy_kill; LISTEN sisy_hosts

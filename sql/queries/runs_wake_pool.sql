-- A run of a job with max_concurrency ended: its slot is free for any guardian of its pool,
-- not only for the one whose run it was (which may be draining, stopping or full). The
-- others sleep while every run they could claim is held back by the cap: wake the one acting
-- for the pool (the listener forwards `sisy_wakeup` there only), which asks the rest for help
-- when it is full itself.
--   $1 run id
SELECT pg_notify('sisy_wakeup', pool) FROM sisy.runs WHERE id = $1

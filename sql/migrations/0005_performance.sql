-- 0005: the indexes through which the guardians' per-pass statements read pending runs and
-- due jobs, so that their cost follows what is due for them, not the backlog or the jobs of
-- other pools (measured in BENCHMARKS.md).
--
-- The claim (runs_claim.sql) and the tick's next run (runs_tick.sql) read the pending runs
-- of one pool in (due_at, id) order and stop at their LIMIT. The index of 0001 had no id, so
-- the claim sorted every due pending run of its pools on every pass: with a backlog of 4,000
-- runs, 2 ms and 300 buffers a claim instead of 0.3 ms and 40.

CREATE INDEX runs_pending_due ON sisy.runs (pool, due_at, id) WHERE state = 'pending';
DROP INDEX sisy.runs_pending;

-- The scheduler's due jobs (jobs_due.sql) and the tick's next job are read the same way, pool
-- by pool in next_due order. Through the single-column jobs_next_due every read stepped over
-- the overdue jobs of pools no guardian of this fleet serves (they stay due until one comes):
-- with 10,000 such jobs among 100,000, 380 buffers and 2 ms a tick. Nothing else reads
-- jobs_next_due (overdue_jobs compares next_due with a per-job ttl, which no index serves).
CREATE INDEX jobs_pool_next_due ON sisy.jobs (pool, next_due) WHERE NOT suspended AND schedule_error IS NULL;
DROP INDEX sisy.jobs_next_due;

-- 0005: the index through which the guardians' per-pass statements read pending runs, so
-- that their cost follows what is due, not the backlog (measured in BENCHMARKS.md).
--
-- The claim (runs_claim.sql) and the tick's next run (runs_tick.sql) read the pending runs
-- of one pool in (due_at, id) order and stop at their LIMIT. The index of 0001 had no id, so
-- the claim sorted every due pending run of its pools on every pass: with a backlog of 4,000
-- runs, 2 ms and 300 buffers a claim instead of 0.3 ms and 40.

CREATE INDEX runs_pending_due ON sisy.runs (pool, due_at, id) WHERE state = 'pending';
DROP INDEX sisy.runs_pending;

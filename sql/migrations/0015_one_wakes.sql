-- 0015: no herd. One guardian per pool (the holder of the lease `pool:<name>`, see
-- sql/queries/heartbeat.sql) materialises the pool's occurrences and is woken by its new
-- runs; every other guardian of the pool wakes only for what is its own:
-- compatible-with: 12
--
-- * jobs_pool_all_next_due: the next `target = 'all'` occurrence of each pool, which every
--   host of the pool wakes for (it has a run in it), found without stepping over the pool's
--   other due jobs.
-- * runs_pending_target: the pending runs meant for one host (`target_host`: the runs of an
--   `all` occurrence), which that host wakes for, found without stepping over its pools'
--   other pending runs (a backlog of ten thousand would be read at every tick otherwise).
CREATE INDEX jobs_pool_all_next_due ON sisy.jobs (pool, next_due)
 WHERE target = 'all' AND NOT suspended AND schedule_error IS NULL;
CREATE INDEX runs_pending_target ON sisy.runs (target_host, due_at)
 WHERE state = 'pending' AND target_host IS NOT NULL;

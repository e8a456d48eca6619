-- Jobs of the given pools with an occurrence due now, oldest first. The row lock is the
-- right to materialise the job's occurrences: a job locked by another guardian is skipped,
-- never waited for.
--   $1 pools  $2 batch size  $3 the pools this guardian acts for (runs_tick.sql `acting`)
-- Of a pool it does not act for, only `all` jobs: each host of the pool wakes for those (their
-- occurrence has a run for it), and the first to lock the job materialises them all.
-- Pool by pool (LATERAL) through jobs_pool_next_due, each read stopping after $2 jobs: one
-- `pool = ANY ($1)` scan in next_due order would step over every overdue job of the pools
-- no guardian here serves, on every pass. With several pools, jobs locked beyond the $2
-- kept stay locked until the scheduler's transaction ends and go to the next pass.
SELECT j.id, j.name, j.pool, j.target, j.schedule, j.timezone,
       extract(epoch FROM j.ttl)::float8 AS ttl,
       extract(epoch FROM j.jitter)::float8 AS jitter,
       -- As text too: a next_due chrono cannot hold ('-infinity') is quoted when flagged.
       j.next_due, j.next_due::text AS next_due_text, now() AS db_now
  FROM unnest($1::text[]) AS p (pool)
 CROSS JOIN LATERAL (
    SELECT id, name, pool, target, schedule, timezone, ttl, jitter, next_due
      FROM sisy.jobs
     WHERE pool = p.pool AND next_due <= now() AND NOT suspended AND schedule_error IS NULL
       AND (p.pool = ANY ($3) OR target = 'all')
     ORDER BY next_due
     LIMIT $2
       FOR UPDATE SKIP LOCKED
 ) j
 ORDER BY j.next_due
 LIMIT $2

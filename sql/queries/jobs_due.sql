-- Jobs of the given pools with an occurrence due now. The row lock is the right to
-- materialise the job's occurrences: a job locked by another guardian is skipped, never waited for.
SELECT id, name, pool, target, schedule, timezone,
       extract(epoch FROM ttl)::float8 AS ttl,
       extract(epoch FROM jitter)::float8 AS jitter,
       next_due, now() AS db_now
  FROM sisy.jobs
 WHERE next_due <= now() AND NOT suspended AND schedule_error IS NULL AND pool = ANY ($1)
 ORDER BY next_due
 LIMIT $2
   FOR UPDATE SKIP LOCKED

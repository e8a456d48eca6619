-- Jobs whose next occurrence no guardian has computed yet (new, rescheduled or resumed).
-- Every guardian seeds every pool: a bad schedule is flagged even where no guardian serves
-- the job's pool. Locked so that two guardians do not compute the same job.
SELECT id, schedule, timezone, now() AS db_now
  FROM sisy.jobs
 WHERE next_due IS NULL AND schedule IS NOT NULL AND schedule_error IS NULL
 ORDER BY id
 LIMIT $1
   FOR UPDATE SKIP LOCKED

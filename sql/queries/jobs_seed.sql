-- Records the first occurrence (or why there is none) of jobs no guardian had computed yet,
-- and wakes the guardian acting for each pool that got one (`sisy_wakeup`, the pool as
-- payload; delivered at commit). Any guardian seeds any pool, so the one that seeds a job is
-- often not the one acting for its pool, which looked at its pool before the job had a
-- next_due and sleeps until what it knew was due then: with LISTEN, up to the 30 s safety
-- poll (50 guardians given 1,250 new jobs at once started a fifth of the first minute's
-- occurrences up to 15 s late). PostgreSQL sends one notification per pool per transaction.
--   $1 job ids  $2 their next occurrence (NULL: none)  $3 why there is none
WITH seeded AS (
    UPDATE sisy.jobs
       SET next_due = x.next_due, schedule_error = x.schedule_error
      FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS x (id, next_due, schedule_error)
     WHERE jobs.id = x.id
 RETURNING jobs.pool, jobs.next_due
)
SELECT pg_notify('sisy_wakeup', p.pool)
  FROM (SELECT DISTINCT pool FROM seeded WHERE next_due IS NOT NULL) p

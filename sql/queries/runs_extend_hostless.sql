-- Extends a job's record of occurrences that found no live, undrained host of its pool (an
-- `all` job while every host drains) when that record is still the job's latest run: one row
-- for a whole stretch without hosts, not one per occurrence. The scheduler holds the job rows'
-- locks (jobs_due.sql), so no two guardians extend the same record. Returns the jobs whose
-- record was extended; the others get a new `expired` row from the scheduler, whose error
-- starts with the same words (scheduler.rs, hostless_message).
--   $1 job ids  $2 occurrences to add  $3 the last of them
UPDATE sisy.runs r
   SET missed_count = r.missed_count + x.n, finished_at = now(),
       error = format('no live, undrained host of pool ''%s'' when due: missed %s occurrences from %s to %s',
                      r.pool, r.missed_count + x.n,
                      to_char(r.scheduled_for AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'),
                      to_char(x.last AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'))
  FROM (SELECT x.job_id, x.n, x.last,
               (SELECT id FROM sisy.runs WHERE job_id = x.job_id ORDER BY id DESC LIMIT 1) AS latest
          FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) AS x (job_id, n, last)) x
 WHERE r.id = x.latest AND r.state = 'expired' AND r.target_host IS NULL
   AND r.reason = 'schedule' AND starts_with(r.error, 'no live, undrained host')
RETURNING x.job_id

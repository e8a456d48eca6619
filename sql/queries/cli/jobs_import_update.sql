-- import-crontab: job $9 becomes what its entry says (a rename included), with the same
-- parameters $1–$8 as jobs_import_create.sql; the columns an entry does not speak of (ttl,
-- retries, suspended…) stay as set by hand.
UPDATE sisy.jobs
   SET name = $1, command = $2, schedule = $3, timezone = $4, pool = $5, run_as = $6,
       env = $7, source = $8
 WHERE id = $9

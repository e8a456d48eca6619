-- import-crontab: job $1 becomes what its entry says (a rename included); the columns an
-- entry does not speak of (ttl, retries, suspended…) stay as set by hand.
UPDATE sisy.jobs
   SET name = $2, command = $3, schedule = $4, timezone = $5, pool = $6, run_as = $7,
       env = $8, source = $9
 WHERE id = $1

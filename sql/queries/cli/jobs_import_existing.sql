-- import-crontab: the jobs of source $1 and the jobs holding a name in $2 (the file's
-- entries), locked until the import commits.
SELECT id, name, source, command, schedule, timezone, pool, run_as, env, suspended
  FROM sisy.jobs
 WHERE source = $1 OR name = ANY ($2::text[])
 ORDER BY name
   FOR UPDATE

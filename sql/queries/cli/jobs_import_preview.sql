-- import-crontab --dry-run: the jobs of source $1 and the jobs holding a name in $2, read
-- without a lock (the dry run writes nothing, and a reader may run it), env values included
-- for a role that may read them (sisy_admin).
SELECT id, name, source, command, schedule, timezone, pool, run_as, env, suspended
  FROM sisy.jobs
 WHERE source = $1 OR name = ANY ($2::text[])
 ORDER BY name

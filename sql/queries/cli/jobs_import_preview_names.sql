-- import-crontab --dry-run by a role that may not read env values (sisy_reader): the same
-- jobs as jobs_import_preview.sql, with the names of their env variables only.
SELECT j.id, j.name, j.source, j.command, j.schedule, j.timezone, j.pool, j.run_as,
       k.env_keys, j.suspended
  FROM sisy.jobs j
  JOIN sisy.job_env_keys k ON k.id = j.id
 WHERE j.source = $1 OR j.name = ANY ($2::text[])
 ORDER BY j.name

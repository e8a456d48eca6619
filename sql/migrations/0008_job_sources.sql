-- 0008: where an imported job came from, and the names of a job's env variables for the
-- roles that may not read their values.
-- compatible-with: 6
--
-- Compatible with a sisy built for schema 6: a new nullable column and a new view, which no
-- statement of that version reads or writes.
--
-- * `sisy.jobs.source`: the source of a job `sisy import-crontab` made (the file's absolute
--   path, or its --source label). A re-import of that source creates, updates and removes
--   exactly the jobs that carry it; a job made any other way has NULL and is never taken
--   over by an import.
-- * `sisy.job_env_keys`: a job's env variable names without their values. A view runs with
--   its owner's rights, so `sisy_reader` (no SELECT on `env`) can see which variables a job
--   sets, e.g. in `sisy jobs show`, without reading a secret.

ALTER TABLE sisy.jobs ADD COLUMN source text CHECK (source <> '');

-- Each import reads the jobs of its source.
CREATE INDEX jobs_source ON sisy.jobs (source) WHERE source IS NOT NULL;

CREATE VIEW sisy.job_env_keys AS
SELECT id, name, ARRAY(SELECT jsonb_object_keys(env) ORDER BY 1) AS env_keys
  FROM sisy.jobs;

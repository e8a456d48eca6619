-- The dashboard's runs of one job: the job's id, through which its runs are read (runs_job).
-- No row: no such job (any more); its runs are then read by name.
--   $1 job name
SELECT id FROM sisy.jobs WHERE name = $1

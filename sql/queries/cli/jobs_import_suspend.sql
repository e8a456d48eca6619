-- import-crontab --suspend-removed: a job gone from its file stops being scheduled.
UPDATE sisy.jobs SET suspended = true WHERE id = $1

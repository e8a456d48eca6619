-- import-crontab: a new job of source $8.
INSERT INTO sisy.jobs (name, command, schedule, timezone, pool, run_as, env, source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)

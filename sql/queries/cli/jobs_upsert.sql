-- import-crontab: insert, or update a job imported before under the same name; says which.
INSERT INTO sisy.jobs AS j (name, command, schedule, timezone, pool, run_as, env)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (name) DO UPDATE
   SET command = excluded.command, schedule = excluded.schedule, timezone = excluded.timezone,
       pool = excluded.pool, run_as = excluded.run_as, env = excluded.env
 WHERE (j.command, j.schedule, j.timezone, j.pool, j.run_as, j.env)
       IS DISTINCT FROM (excluded.command, excluded.schedule, excluded.timezone, excluded.pool,
                         excluded.run_as, excluded.env)
RETURNING (xmax = 0) AS inserted

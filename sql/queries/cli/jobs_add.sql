-- Columns left NULL take the table's defaults.
INSERT INTO sisy.jobs (name, command, schedule, timezone, pool, target, ttl, max_runtime,
                       kill_grace, max_retries, retry_delay, overlap, jitter, run_as, env,
                       workdir, suspended)
VALUES ($1, $2, $3, coalesce($4, 'UTC'), coalesce($5, 'default'), coalesce($6, 'any'),
        coalesce($7::text::interval, '5 minutes'), $8::text::interval,
        coalesce($9::text::interval, '10 seconds'), coalesce($10, 0),
        coalesce($11::text::interval, '30 seconds'), coalesce($12, 'forbid'),
        coalesce($13::text::interval, '0'), $14, coalesce($15::jsonb, '{}'), $16, coalesce($17, false))
RETURNING id

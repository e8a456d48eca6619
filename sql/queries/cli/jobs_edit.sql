-- A NULL parameter leaves the column as it is; an empty string clears a nullable column.
-- $15 adds or replaces env keys, $16 removes them.
UPDATE sisy.jobs SET
    command     = coalesce($2, command),
    schedule    = CASE WHEN $3::text IS NULL THEN schedule ELSE nullif($3, '') END,
    timezone    = coalesce($4, timezone),
    pool        = coalesce($5, pool),
    target      = coalesce($6, target),
    ttl         = coalesce($7::text::interval, ttl),
    max_runtime = CASE WHEN $8::text IS NULL THEN max_runtime ELSE nullif($8, '')::interval END,
    kill_grace  = coalesce($9::text::interval, kill_grace),
    max_retries = coalesce($10, max_retries),
    retry_delay = coalesce($11::text::interval, retry_delay),
    overlap     = coalesce($12, overlap),
    jitter      = coalesce($13::text::interval, jitter),
    run_as      = CASE WHEN $14::text IS NULL THEN run_as ELSE nullif($14, '') END,
    env         = (env || coalesce($15::jsonb, '{}')) - coalesce($16::text[], '{}'),
    workdir     = CASE WHEN $17::text IS NULL THEN workdir ELSE nullif($17, '') END,
    trigger_rule        = coalesce($18, trigger_rule),
    continue_on_failure = coalesce($19, continue_on_failure),
    flow_timeout        = CASE WHEN $20::text IS NULL THEN flow_timeout
                               ELSE nullif($20, '')::interval END,
    foreach             = CASE WHEN $21::text IS NULL THEN foreach
                               ELSE nullif($21, '')::jsonpath END,
    max_concurrency     = CASE WHEN $22::text IS NULL THEN max_concurrency
                               ELSE nullif($22, '')::int END
 WHERE name = $1
RETURNING id

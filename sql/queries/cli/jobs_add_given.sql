-- `sisy jobs add`, second statement: the columns with a table default that the command
-- line gave; a NULL parameter keeps the default the INSERT just took (no default is
-- restated here).
UPDATE sisy.jobs SET
    timezone    = coalesce($2, timezone),
    pool        = coalesce($3, pool),
    target      = coalesce($4, target),
    ttl         = coalesce($5::text::interval, ttl),
    kill_grace  = coalesce($6::text::interval, kill_grace),
    max_retries = coalesce($7, max_retries),
    retry_delay = coalesce($8::text::interval, retry_delay),
    overlap     = coalesce($9, overlap),
    jitter      = coalesce($10::text::interval, jitter),
    env         = coalesce($11::jsonb, env),
    suspended   = coalesce($12, suspended),
    trigger_rule        = coalesce($13, trigger_rule),
    continue_on_failure = coalesce($14, continue_on_failure)
 WHERE id = $1

-- `sisy jobs add`, first of two statements in one transaction: the row with the columns
-- that have no default (name, command) and the nullable ones, so that every other column
-- takes the table's own default; jobs_add_given.sql then sets what the command line gave.
-- `foreach` and `max_concurrency` arrive as text ('' = none) so that a bad value is the
-- database's to refuse, with its own message.
INSERT INTO sisy.jobs (name, command, schedule, max_runtime, run_as, workdir, flow_timeout,
                       foreach, max_concurrency)
VALUES ($1, $2, $3, $4::text::interval, $5, $6, nullif($7::text, '')::interval,
        nullif($8::text, '')::jsonpath, nullif($9::text, '')::int)
RETURNING id

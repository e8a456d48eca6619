-- `sisy flows plot ROOT`: the flow of a root job as it is declared now (sisy.dependencies):
-- every job reachable from it and the edges between them, plus what the CLI needs to say
-- why a name is not a root (whether the job exists, and the roots above it). A fan-out
-- member carries its `foreach` path.
WITH RECURSIVE reach (job) AS (
    SELECT name FROM sisy.jobs WHERE name = $1
    UNION
    SELECT d.job FROM sisy.dependencies d JOIN reach ON d.upstream = reach.job
), up (job) AS (
    SELECT $1::text
    UNION
    SELECT d.upstream FROM sisy.dependencies d JOIN up ON d.job = up.job
)
SELECT jsonb_build_object(
    'exists', EXISTS (SELECT 1 FROM sisy.jobs WHERE name = $1),
    'roots', (SELECT coalesce(jsonb_agg(up.job ORDER BY up.job), '[]') FROM up
               WHERE up.job <> $1
                 AND NOT EXISTS (SELECT 1 FROM sisy.dependencies d WHERE d.job = up.job)),
    'nodes', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                         'job', j.name, 'trigger_rule', j.trigger_rule, 'foreach', j.foreach::text)
                         ORDER BY j.name), '[]')
                FROM reach JOIN sisy.jobs j ON j.name = reach.job),
    'edges', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                         'job', d.job, 'upstream', d.upstream, 'condition', d.condition::text)
                         ORDER BY d.upstream, d.job), '[]')
                FROM sisy.dependencies d WHERE d.upstream IN (SELECT job FROM reach)))

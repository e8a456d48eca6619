-- The dashboard's fleet page (`sisy web`, /): every host with its lease and load, and the
-- counts worth a glance. Each count is an index read or a read of a small table, never a
-- scan of the runs' history: running and pending through their partial indexes, the failures
-- and misses of the last day through runs_outcome alone (schema 20: it carries finished_at
-- and missed_count).
SELECT jsonb_build_object(
    'hosts', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                         'name', h.name, 'pools', h.pools, 'version', h.version,
                         'started_at', h.started_at, 'last_seen', h.last_seen,
                         'lease_left', extract(epoch FROM h.lease_until - now()),
                         'alive', h.lease_until >= now(), 'capacity', h.capacity,
                         'running', h.running, 'draining', h.draining)
                         ORDER BY h.lease_until < now(), h.name), '[]')
                FROM sisy.hosts h),
    -- Both read an index only (jobs_pkey; jobs_pool_next_due holds the active jobs): a
    -- scan of 100,000 jobs' rows took 40 ms, these 10 ms each.
    'jobs',           (SELECT count(*) FROM sisy.jobs),
    'jobs_active',    (SELECT count(*) FROM sisy.jobs WHERE NOT suspended AND schedule_error IS NULL),
    'running',        (SELECT count(*) FROM sisy.runs WHERE state = 'running'),
    'pending',        (SELECT count(*) FROM sisy.runs WHERE state = 'pending'),
    'flows_running',  (SELECT count(*) FROM sisy.flow_runs WHERE state = 'running'),
    'failed_24h',     (SELECT count(*) FROM sisy.runs
                        WHERE state IN ('failed', 'timed_out', 'lost', 'killed')
                          AND finished_at > now() - interval '24 hours'),
    'missed_24h',     (SELECT coalesce(sum(missed_count), 0) FROM sisy.runs
                        WHERE state IN ('expired', 'skipped')
                          AND finished_at > now() - interval '24 hours'))

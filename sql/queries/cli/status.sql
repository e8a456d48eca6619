-- The fleet on one screen: counts, then the lists behind the counts that need attention.
SELECT jsonb_build_object(
    'hosts_alive',    (SELECT count(*) FROM sisy.hosts WHERE lease_until >= now()),
    'hosts_dead',     (SELECT count(*) FROM sisy.hosts WHERE lease_until < now()),
    'hosts_draining', (SELECT count(*) FROM sisy.hosts WHERE draining AND lease_until >= now()),
    'capacity',       (SELECT coalesce(sum(capacity), 0) FROM sisy.hosts WHERE lease_until >= now()),
    'jobs',           (SELECT count(*) FROM sisy.jobs),
    'jobs_suspended', (SELECT count(*) FROM sisy.jobs WHERE suspended),
    'running',        (SELECT count(*) FROM sisy.runs WHERE state = 'running'),
    'pending',        (SELECT count(*) FROM sisy.runs WHERE state = 'pending'),
    'failing_jobs',   (SELECT coalesce(jsonb_agg(jsonb_build_object('name', name, 'consecutive_failures',
                             consecutive_failures, 'last_state', last_state) ORDER BY name), '[]')
                         FROM sisy.job_status WHERE consecutive_failures > 0),
    'schedule_errors',(SELECT coalesce(jsonb_agg(jsonb_build_object('name', name, 'schedule_error',
                             schedule_error) ORDER BY name), '[]')
                         FROM sisy.jobs WHERE schedule_error IS NOT NULL),
    'overdue_jobs',   (SELECT coalesce(jsonb_agg(to_jsonb(o) ORDER BY name), '[]') FROM sisy.overdue_jobs o),
    'dead_hosts',     (SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY name), '[]') FROM sisy.dead_hosts d),
    'missed_24h',     (SELECT coalesce(sum(missed_count), 0) FROM sisy.runs
                        WHERE state = 'expired' AND finished_at > now() - interval '24 hours'),
    'skipped_24h',    (SELECT count(*) FROM sisy.runs
                        WHERE state = 'skipped' AND finished_at > now() - interval '24 hours'))

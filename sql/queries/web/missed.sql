-- The dashboard's missed page: occurrences that never ran (expired, with how many
-- occurrences each row stands for, and skipped), newest first, older than run $1, through
-- runs_outcome (schema 20); the jobs overdue now (no guardian materialises them: see
-- sisy.overdue_jobs) and the dead hosts.
--   $1 before this id  $2 page size
SELECT jsonb_build_object(
    'missed', (SELECT coalesce(jsonb_agg(to_jsonb(x) ORDER BY x.id DESC), '[]') FROM (
                  SELECT r.id, r.job_name, r.scheduled_for, r.state, r.missed_count,
                         left(r.error, 300) AS error, r.finished_at
                    FROM sisy.runs r
                   WHERE r.state IN ('expired', 'skipped') AND ($1::bigint IS NULL OR r.id < $1)
                   ORDER BY r.id DESC
                   LIMIT $2) x),
    'overdue', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                           'name', o.name, 'pool', o.pool, 'schedule', o.schedule,
                           'next_due', o.next_due) ORDER BY o.next_due), '[]')
                  FROM (SELECT * FROM sisy.overdue_jobs ORDER BY next_due LIMIT 200) o),
    'dead_hosts', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                              'name', d.name, 'pools', d.pools, 'last_seen', d.last_seen)
                              ORDER BY d.last_seen DESC), '[]')
                     FROM sisy.dead_hosts d))

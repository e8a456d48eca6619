-- The job's definition and status in one object, readable by every role: `env` itself is
-- not read (sisy_reader may not), only the names of its variables (sisy.job_env_keys). Its
-- place in a flow: the jobs it runs after and the jobs that run after it, with the edges'
-- conditions.
SELECT to_jsonb(d) || jsonb_build_object(
           'env_keys', k.env_keys,
           'upstreams', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                    'job', u.upstream, 'condition', u.condition::text)
                                    ORDER BY u.upstream), '[]')
                           FROM sisy.dependencies u WHERE u.job = d.name),
           'downstreams', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                      'job', w.job, 'condition', w.condition::text)
                                      ORDER BY w.job), '[]')
                             FROM sisy.dependencies w WHERE w.upstream = d.name),
           'last_run_id', s.last_run_id, 'last_state', s.last_state,
           'last_finished_at', s.last_finished_at, 'last_success_at', s.last_success_at,
           'consecutive_failures', s.consecutive_failures, 'running', s.running)
  FROM (SELECT id, name, command, schedule, timezone, pool, target, ttl, max_runtime,
               kill_grace, max_retries, retry_delay, overlap, jitter, run_as, workdir,
               suspended, trigger_rule, continue_on_failure, flow_timeout, foreach::text,
               max_concurrency, source,
               created_at, updated_at, next_due, schedule_error
          FROM sisy.jobs WHERE name = $1) d
  JOIN sisy.job_env_keys k ON k.id = d.id
  JOIN sisy.job_status s ON s.id = d.id

-- The job's definition and status in one object.
SELECT to_jsonb(j) || jsonb_build_object(
           'last_run_id', s.last_run_id, 'last_state', s.last_state,
           'last_finished_at', s.last_finished_at, 'last_success_at', s.last_success_at,
           'consecutive_failures', s.consecutive_failures, 'running', s.running)
  FROM sisy.jobs j JOIN sisy.job_status s ON s.id = j.id
 WHERE j.name = $1

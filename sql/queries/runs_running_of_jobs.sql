-- Started runs of these jobs, for the overlap rules (read under the jobs' admission lock),
-- with the fan-out an item belongs to (its flow run): items of one fan-out do not overlap.
SELECT id, job_id, target_host, CASE WHEN item_index IS NOT NULL THEN flow_run_id END AS fan_out
  FROM sisy.runs
 WHERE job_id = ANY ($1) AND state = 'running' AND started_at IS NOT NULL

-- Started runs of these jobs, for the overlap rules (read under the jobs' admission lock).
SELECT id, job_id, target_host FROM sisy.runs
 WHERE job_id = ANY ($1) AND state = 'running' AND started_at IS NOT NULL

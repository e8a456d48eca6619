-- `sisy flows show ID`: one row per member of the flow run (sisy.flow_members), those with
-- runs first in the order of their latest run, then the members not reached yet by name.
SELECT to_jsonb(m) - 'flow_run_id' - 'root_job' - 'scheduled_for'
  FROM sisy.flow_members m
 WHERE m.flow_run_id = $1
 ORDER BY m.run_id NULLS LAST, m.job

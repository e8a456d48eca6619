-- `sisy flows plot ID`: a flow run's graph as it was when it opened (its snapshot in
-- flow_run_members and flow_run_edges), each member with its state from sisy.flow_members.
-- No row: no such flow run.
SELECT jsonb_build_object(
    'id', f.id, 'root', f.root_job, 'scheduled_for', f.scheduled_for, 'state', f.state,
    'nodes', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                         'job', m.job, 'trigger_rule', m.trigger_rule, 'state', m.state)
                         ORDER BY m.job), '[]')
                FROM sisy.flow_members m WHERE m.flow_run_id = f.id),
    'edges', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                         'job', e.job, 'upstream', e.upstream, 'condition', e.condition::text)
                         ORDER BY e.upstream, e.job), '[]')
                FROM sisy.flow_run_edges e WHERE e.flow_run_id = f.id))
  FROM sisy.flow_runs f
 WHERE f.id = $1

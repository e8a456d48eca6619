-- `sisy flows plot ID`: a flow run's graph as it was when it opened (its snapshot in
-- flow_run_members and flow_run_edges), each member with its state from sisy.flow_members.
-- A fan-out member is one node: its `foreach` (as snapshotted) and its items counted by the
-- view (`items`, `items_succeeded`, …), never its runs one by one. The member's row is
-- passed whole but for its result and error, which for 10,000 items are 10,000 of each.
-- No row: no such flow run.
SELECT jsonb_build_object(
    'id', f.id, 'root', f.root_job, 'scheduled_for', f.scheduled_for, 'state', f.state,
    'nodes', (SELECT coalesce(jsonb_agg(
                         (to_jsonb(m) - 'flow_run_id' - 'root_job' - 'scheduled_for'
                                      - 'result' - 'error')
                         || jsonb_build_object('foreach', s.foreach::text)
                         ORDER BY m.job), '[]')
                FROM sisy.flow_members m
                JOIN sisy.flow_run_members s ON s.flow_run_id = m.flow_run_id AND s.job = m.job
               WHERE m.flow_run_id = f.id),
    'edges', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                         'job', e.job, 'upstream', e.upstream, 'condition', e.condition::text)
                         ORDER BY e.upstream, e.job), '[]')
                FROM sisy.flow_run_edges e WHERE e.flow_run_id = f.id))
  FROM sisy.flow_runs f
 WHERE f.id = $1

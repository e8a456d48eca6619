-- `sisy flows show ID`: the flow run, as sisy.flow_status has it.
SELECT to_jsonb(s) FROM sisy.flow_status s WHERE s.id = $1

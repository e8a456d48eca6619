-- The frozen inputs of fan-out members, read by a guardian for their items once per member
-- decision (runs_claim.sql names it for each item; the guardian keeps what it read).
--   $1 flow run ids  $2 member job names (pairwise)
SELECT fm.flow_run_id, fm.job, fm.first_attempt, fm.inputs::text AS inputs
  FROM unnest($1::bigint[], $2::text[]) AS k (flow_run_id, job)
  JOIN sisy.flow_run_members fm ON fm.flow_run_id = k.flow_run_id AND fm.job = k.job

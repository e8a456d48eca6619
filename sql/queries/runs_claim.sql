-- The claim: the one statement through which a run becomes this host's. SKIP LOCKED lets any
-- number of guardians claim at once without waiting on each other or taking the same run.
--   $1 host  $2 pools  $3 free capacity
-- Pool by pool (LATERAL), so that each reads the index runs_pending_due in due order and
-- stops after $3 rows: `pool = ANY ($2)` over the whole set would read and sort every due
-- pending run on every claim, however long the backlog. With several pools, rows locked
-- beyond the $3 kept are released when the statement ends.
-- Runs of a job already at its max_concurrency are left alone: claimed, they would only go
-- back to pending at admission, and a guardian would claim and release them at full speed.
-- The jobs at their cap are found once per statement from the running runs (claimed ones
-- included; as many rows as the fleet runs) and probed as a hash: a capped backlog costs a
-- walk past its rows (2 ms for 10,000), and no backlog costs nothing more (0.4 ms either way).
-- A correlated count per row cost 50 ms for 10,000, NOT EXISTS became an anti-join that read
-- and sorted every due run (0.4 → 5 ms with 10,000 uncapped runs due). The set is a snapshot,
-- so correctness stays with admission (two guardians may claim past the cap at the same
-- moment; admission releases the surplus).
WITH picked AS (
    SELECT r.id
      FROM unnest($2::text[]) AS p (pool)
     CROSS JOIN LATERAL (
        SELECT id, due_at FROM sisy.runs c
         WHERE state = 'pending' AND pool = p.pool AND due_at <= now() AND deadline > now()
           AND (target_host IS NULL OR target_host = $1)
           AND NOT coalesce((SELECT draining FROM sisy.hosts WHERE name = $1), true)
           AND (c.job_id IS NULL OR c.job_id NOT IN (
                SELECT x.job_id FROM sisy.runs x JOIN sisy.jobs j ON j.id = x.job_id
                 WHERE x.state = 'running' AND j.max_concurrency IS NOT NULL
                 GROUP BY x.job_id, j.max_concurrency HAVING count(*) >= j.max_concurrency))
         ORDER BY due_at, id
         LIMIT $3
           FOR UPDATE SKIP LOCKED
     ) r
     ORDER BY r.due_at, r.id
     LIMIT $3
)
UPDATE sisy.runs r
   SET state = 'running', host = $1, claimed_at = now(), heartbeat_at = now()
  FROM picked, sisy.jobs j
 WHERE r.id = picked.id AND j.id = r.job_id
RETURNING r.id, r.job_id, r.job_name, r.scheduled_for, r.attempt, r.target_host, r.due_at,
          j.command, j.run_as, j.env, j.workdir, j.overlap, j.max_concurrency, r.item_index,
          extract(epoch FROM j.max_runtime)::float8 AS max_runtime,
          extract(epoch FROM j.kill_grace)::float8 AS kill_grace,
          -- A member's frozen inputs as text: handed to the job as they are, never decoded
          -- (a depth the guardian's JSON reader refuses cannot stop the run). An item of a
          -- fan-out has none in its row (they are kept once, on its member): the claim
          -- names its member's decision (`member_decision`, the decision's first attempt),
          -- and the guardian reads those inputs once per decision (flow_member_inputs.sql),
          -- not with each item: turning 60 KB of inputs into text cost 1 ms per item.
          r.flow_run_id, r.inputs::text AS inputs, r.item::text AS item,
          (SELECT fm.first_attempt FROM sisy.flow_run_members fm
            WHERE fm.flow_run_id = r.flow_run_id AND fm.job = r.job_name
              AND r.item_index IS NOT NULL AND r.inputs IS NULL) AS member_decision

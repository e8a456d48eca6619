-- 0011: watching flows (SPEC §7): one row per member of each flow run, and one row per
-- flow run. Plain views over the snapshot and the runs: each reads its flow run's members
-- and their runs through indexes (flow_run_members' key, runs_flow), not the history.

-- One row per member of each flow run, including the members not reached yet: `waiting`
-- while the flow run runs, `not_reached` once it ended without them. A decided member shows
-- its runs since its current decision, the last attempt of each (all hosts' runs of a
-- `target = 'all'` member, and all items of a fan-out, together: running or pending while
-- one is, else the worst). A fan-out member's items are counted (`items`: how many its
-- decision made, 0 for an empty list; NULL without foreach); its hosts are listed once each
-- and its errors cut at 2,000 characters (10,000 items may each have one).
CREATE VIEW sisy.flow_members AS
SELECT m.flow_run_id, f.root_job, f.scheduled_for, m.job, m.trigger_rule, m.continue_on_failure,
       CASE WHEN NOT m.decided OR r.runs IS NULL
            THEN CASE WHEN f.state = 'running' THEN 'waiting' ELSE 'not_reached' END
            ELSE r.state END AS state,
       m.outcome, coalesce(r.runs, 0) AS runs, r.run_id, r.attempt, r.hosts,
       r.started_at, r.finished_at, r.error, r.result,
       m.items,
       CASE WHEN m.items IS NOT NULL THEN coalesce(r.items_succeeded, 0) END AS items_succeeded,
       CASE WHEN m.items IS NOT NULL THEN coalesce(r.items_failed, 0) END AS items_failed,
       CASE WHEN m.items IS NOT NULL THEN coalesce(r.items_running, 0) END AS items_running,
       CASE WHEN m.items IS NOT NULL THEN coalesce(r.items_pending, 0) END AS items_pending
  FROM sisy.flow_run_members m
  JOIN sisy.flow_runs f ON f.id = m.flow_run_id
  LEFT JOIN LATERAL (
        SELECT count(*) AS runs, max(l.id) AS run_id, max(l.attempt) AS attempt,
               CASE WHEN bool_or(l.state = 'running') THEN 'running'
                    WHEN bool_or(l.state = 'pending') THEN 'pending'
                    ELSE (array_agg(l.state ORDER BY
                            CASE WHEN l.state IN ('failed', 'timed_out', 'lost', 'killed', 'expired',
                                                  'upstream_failed') THEN 0
                                 WHEN l.state = 'succeeded' THEN 2 ELSE 1 END, l.id))[1] END AS state,
               array_agg(DISTINCT l.host) FILTER (WHERE l.host IS NOT NULL) AS hosts,
               min(l.started_at) AS started_at,
               CASE WHEN bool_and(l.finished_at IS NOT NULL) THEN max(l.finished_at) END AS finished_at,
               left(string_agg(l.error, '; ' ORDER BY l.id), 2000) AS error,
               CASE WHEN m.items IS NOT NULL
                    THEN coalesce(jsonb_agg(l.result ORDER BY l.item_index)
                                  FILTER (WHERE l.item_index IS NOT NULL), '[]')
                    WHEN bool_and(l.target_host IS NULL) THEN (array_agg(l.result ORDER BY l.id DESC))[1]
                    ELSE jsonb_object_agg(coalesce(l.target_host, ''), l.result) END AS result,
               count(*) FILTER (WHERE l.item_index IS NOT NULL AND l.state = 'succeeded') AS items_succeeded,
               count(*) FILTER (WHERE l.item_index IS NOT NULL AND l.state IN (
                   'failed', 'timed_out', 'lost', 'killed', 'expired', 'upstream_failed')) AS items_failed,
               count(*) FILTER (WHERE l.item_index IS NOT NULL AND l.state = 'running') AS items_running,
               count(*) FILTER (WHERE l.item_index IS NOT NULL AND l.state = 'pending') AS items_pending
          FROM (SELECT DISTINCT ON (target_host, item_index) * FROM sisy.runs
                 WHERE runs.flow_run_id = m.flow_run_id AND runs.job_name = m.job
                   AND runs.attempt >= m.first_attempt
                 ORDER BY target_host, item_index, attempt DESC) l
        HAVING count(*) > 0
  ) r ON true;

-- One row per flow run: its root and logical time, its state, its members counted by state,
-- when it started and finished, and the members whose failure failed it.
CREATE VIEW sisy.flow_status AS
SELECT f.id, f.root_job, f.scheduled_for, f.state, f.created_at AS started_at, f.finished_at,
       f.deadline, f.error,
       c.members, c.waiting, c.pending, c.running, c.succeeded, c.failed, c.skipped,
       coalesce(c.failed_members, '{}') AS failed_members
  FROM sisy.flow_runs f
  LEFT JOIN LATERAL (
        SELECT count(*) AS members,
               count(*) FILTER (WHERE fm.state IN ('waiting', 'not_reached')) AS waiting,
               count(*) FILTER (WHERE fm.state = 'pending') AS pending,
               count(*) FILTER (WHERE fm.state = 'running') AS running,
               count(*) FILTER (WHERE fm.state = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE fm.state IN ('failed', 'timed_out', 'lost', 'killed', 'expired',
                                                   'upstream_failed')) AS failed,
               count(*) FILTER (WHERE fm.state IN ('skipped', 'cancelled')) AS skipped,
               array_agg(fm.job ORDER BY fm.job) FILTER (WHERE fm.outcome = 'failure') AS failed_members
          FROM sisy.flow_members fm WHERE fm.flow_run_id = f.id
  ) c ON true;

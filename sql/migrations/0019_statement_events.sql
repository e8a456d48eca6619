-- 0019: run events are published once per statement, not by a trigger call per row.
-- compatible-with: 12
--
-- Compatible with a sisy built for schema 12: the same events, with the same payloads, on
-- the same channels; only the triggers that send them change.
--
-- Every run state change called sisy.runs_state_changed once per row: three calls per
-- run (its insert, its admission, its end), each a PL/pgSQL call that published one
-- `sisy_events` notification and, for most rows, did nothing else. That call was the
-- largest part of the server's time in an UPDATE of runs (4,000 runs from pending to
-- running and on to succeeded: 175 ms with it, 83 without, 99 with the statement-level
-- publication below). Now:
--
-- * Statement-level triggers (their names sort before runs_move_flows, so they fire before
--   it, as the row triggers did) publish the changes of the statement with one query over
--   its transition tables, and one `sisy_wakeup` per pool that got pending runs (the row
--   trigger sent one per row, which NOTIFY folded together anyway).
-- * The row trigger still runs, unchanged, for the rows that need more than an event: a
--   failed, timed-out, lost or killed run (its retry) and a flow root's occurrence recorded
--   final at once (its flow run decides). It publishes those rows' events itself, first,
--   as before, so a retry's `pending` still comes after the failure that caused it; the
--   statement-level triggers leave those rows out. The two conditions below are each
--   other's exact complement (NULL counts as false on both sides): every change is
--   published once.
DROP TRIGGER runs_inserted ON sisy.runs;
DROP TRIGGER runs_state_changed ON sisy.runs;

CREATE TRIGGER runs_inserted AFTER INSERT ON sisy.runs
    FOR EACH ROW
    WHEN (coalesce(NEW.state <> 'pending' AND NEW.flow_run_id IS NOT NULL AND NEW.reason <> 'flow', false))
    EXECUTE FUNCTION sisy.runs_state_changed();
CREATE TRIGGER runs_state_changed AFTER UPDATE OF state ON sisy.runs
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND coalesce(NEW.state IN ('failed', 'timed_out', 'lost', 'killed'), false))
    EXECUTE FUNCTION sisy.runs_state_changed();

CREATE FUNCTION sisy.runs_announce_inserts() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('sisy_events', json_build_object(
                'run_id', n.id, 'job', left(n.job_name, 1000), 'old_state', NULL,
                'new_state', n.state, 'host', n.host, 'flow_run_id', n.flow_run_id)::text)
       FROM new_runs n
      WHERE NOT coalesce(n.state <> 'pending' AND n.flow_run_id IS NOT NULL AND n.reason <> 'flow', false);
    PERFORM pg_notify('sisy_wakeup', p.pool)
       FROM (SELECT DISTINCT pool FROM new_runs WHERE state = 'pending') p;
    RETURN NULL;
END $$;

-- The transition tables carry no statistics and the statement's plan is kept for the
-- session, made for the first statement's few rows: a nested loop joining them made one
-- statement ending 8,000 runs cost 5 s (quadratic). Without nested loops the join is hashed.
CREATE FUNCTION sisy.runs_announce_updates() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_nestloop = off AS $$
BEGIN
    PERFORM pg_notify('sisy_events', json_build_object(
                'run_id', n.id, 'job', left(n.job_name, 1000), 'old_state', o.state,
                'new_state', n.state, 'host', n.host, 'flow_run_id', n.flow_run_id)::text)
       FROM new_runs n JOIN old_runs o ON o.id = n.id
      WHERE o.state IS DISTINCT FROM n.state
        AND NOT coalesce(n.state IN ('failed', 'timed_out', 'lost', 'killed'), false);
    RETURN NULL;
END $$;

CREATE TRIGGER runs_announce_inserts AFTER INSERT ON sisy.runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION sisy.runs_announce_inserts();
CREATE TRIGGER runs_announce_updates AFTER UPDATE ON sisy.runs
    REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION sisy.runs_announce_updates();

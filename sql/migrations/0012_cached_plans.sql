-- 0012: the flow engine's functions on the hot path keep their plans, and inserting a
-- fan-out's items no longer calls the trigger that opens flow runs.
-- compatible-with: 11
--
-- A LANGUAGE sql function that cannot be inlined (one with a SET clause, as every function
-- here has) is parsed and planned again at every call. flow_member_outcome runs once for
-- every run of a flow that ends, in the statement that records the end: its planning doubled
-- the cost of ending an item of a fan-out (0.8 ms against 0.35 ms for a plain run, measured
-- on 10,000 items); flows_due_in runs in every guardian's tick. In PL/pgSQL each statement is
-- planned once per session and its plan kept (BENCHMARKS.md, "Fan-out"). Same signatures,
-- same results, same privileges (CREATE OR REPLACE keeps them).

CREATE OR REPLACE FUNCTION sisy.flow_member_outcome_of(fr_id bigint, member text, since int, keep_going boolean)
    RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        WITH latest AS (
            SELECT DISTINCT ON (target_host, item_index) state FROM sisy.runs
             WHERE flow_run_id = fr_id AND job_name = member AND attempt >= since
             ORDER BY target_host, item_index, attempt DESC
        )
        SELECT CASE
            WHEN count(*) = 0 OR bool_or(state IN ('pending', 'running')) THEN NULL
            WHEN bool_or(state IN ('failed', 'timed_out', 'lost', 'killed', 'expired', 'upstream_failed'))
                THEN CASE WHEN keep_going THEN 'success' ELSE 'failure' END
            WHEN bool_and(state = 'succeeded') THEN 'success'
            WHEN (SELECT items FROM sisy.flow_run_members WHERE flow_run_id = fr_id AND job = member) = 0
                THEN 'success'
            ELSE 'skipped' END
          FROM latest);
END $$;

CREATE OR REPLACE FUNCTION sisy.flow_member_outcome(fr_id bigint, member text, since int, keep_going boolean)
    RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A run still open (pending, running, a retry waiting) is always its item's last attempt:
    -- while one is, the outcome is open, found through runs_flow_open without reading the
    -- member's other items (ending 10,000 items one by one would read them all each time).
    IF EXISTS (SELECT 1 FROM sisy.runs
                WHERE flow_run_id = fr_id AND job_name = member AND attempt >= since
                  AND state IN ('pending', 'running')) THEN
        RETURN NULL;
    END IF;
    RETURN sisy.flow_member_outcome_of(fr_id, member, since, keep_going);
END $$;

CREATE OR REPLACE FUNCTION sisy.flows_due_in(recheck interval DEFAULT '30 seconds') RETURNS float8
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN extract(epoch FROM least(
        (SELECT deadline FROM sisy.flow_runs WHERE state = 'running' AND deadline IS NOT NULL
          ORDER BY deadline LIMIT 1),
        (SELECT checked_at + recheck FROM sisy.flow_runs WHERE state = 'running'
          ORDER BY checked_at LIMIT 1)) - now())::float8;
END $$;

-- runs_open_flow has work only for a root's scheduled or manual occurrence; every other
-- insert called it to return at once: 18 µs a row (the call of a SECURITY DEFINER function
-- with a SET clause), 180 of the 850 ms that inserting a fan-out's 10,000 items took. The
-- condition of its first test, as the trigger's WHEN, spares those calls.
DROP TRIGGER runs_open_flow ON sisy.runs;
CREATE TRIGGER runs_open_flow BEFORE INSERT ON sisy.runs
    FOR EACH ROW WHEN (NEW.flow_run_id IS NULL AND NEW.reason IN ('schedule', 'manual'))
    EXECUTE FUNCTION sisy.runs_open_flow();

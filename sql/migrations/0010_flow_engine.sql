-- 0010: the flow engine (SPEC §7): opening a flow run, deciding members exactly once,
-- ending the flow run, cancel, rerun, timeouts and the guardians' safety net.
--
-- How it stays exactly once (ARCHITECTURE.md, "Flows"):
-- * A member is decided in the transaction that recorded its last upstream's final outcome,
--   under a lock on its flow run (FOR UPDATE): two upstreams finishing at once serialise
--   there, and the second (READ COMMITTED: its next statement sees the first's commit) finds
--   the member already decided. Without that lock each would see the other still running
--   and nobody would decide the member: the flow would hang.
-- * Lock order everywhere: run rows, then the flow run; several flow runs in id order. A
--   statement that ended runs holds their rows and then takes their flow runs (once per
--   statement, in id order: runs_move_flows); cancel and timeout lock the flow run's open
--   runs in id order first. Decisions only insert runs, never wait on existing run rows.
-- * Nothing is decided in a flow run that has ended (until sisy.rerun_flow reopens it).
-- * Retries carry the flow run and the frozen inputs; a member's outcome reads its last
--   attempt, so a member waits for its upstream's last attempt.

-- The outcome of a member for its downstream, from the last attempt of each of its runs
-- since its current decision: NULL while one may still change (pending, running, a retry
-- waiting); success | failure | skipped once final. All hosts' runs of a `target = 'all'`
-- member together (and all items of a fan-out: an empty list, items = 0, succeeded): a
-- failure if one failed, success only if all succeeded.
-- The outcome over the last attempts (flow_member_outcome's slow path).
CREATE FUNCTION sisy.flow_member_outcome_of(fr_id bigint, member text, since int, keep_going boolean)
    RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
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
      FROM latest
$$;

CREATE FUNCTION sisy.flow_member_outcome(fr_id bigint, member text, since int, keep_going boolean)
    RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- A run still open (pending, running, a retry waiting) is always its item's last attempt:
    -- while one is, the outcome is open, found through runs_flow_open without reading the
    -- member's other items (ending 10,000 items one by one would read them all each time).
    SELECT CASE WHEN EXISTS (SELECT 1 FROM sisy.runs
                              WHERE flow_run_id = fr_id AND job_name = member AND attempt >= since
                                AND state IN ('pending', 'running'))
                THEN NULL
                ELSE (SELECT sisy.flow_member_outcome_of(fr_id, member, since, keep_going)) END
$$;

-- Publishes a flow run's state change on sisy_events, like a run's.
CREATE FUNCTION sisy.flow_runs_state_changed() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('sisy_events', json_build_object(
        'flow_run_id', NEW.id, 'root', left(NEW.root_job, 1000),
        'old_state', CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE OLD.state END,
        'new_state', NEW.state)::text);
    RETURN NULL;
END $$;

CREATE TRIGGER flow_runs_inserted AFTER INSERT ON sisy.flow_runs
    FOR EACH ROW EXECUTE FUNCTION sisy.flow_runs_state_changed();
CREATE TRIGGER flow_runs_state_changed AFTER UPDATE OF state ON sisy.flow_runs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION sisy.flow_runs_state_changed();

-- Whether an edge's condition fails over its upstream's result: NULL when it holds, '' when
-- it is false or the result is NULL, a note when it cannot be evaluated. Silent mode does not
-- cover everything (a `$variable`, a datetime compared without a zone): an error here would
-- fail the upstream's finishing write, so it counts as a false condition, and the member's
-- error says why.
CREATE FUNCTION sisy.flow_condition_fails(res jsonb, cond jsonpath, upstream text) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(jsonb_path_match(res, cond, '{}', true), false) THEN
        RETURN NULL;
    END IF;
    RETURN '';
EXCEPTION WHEN OTHERS THEN
    RETURN format('; the condition %s on %s could not be evaluated: %s',
                  quote_literal(cond::text), quote_literal(upstream), SQLERRM);
END $$;

-- Decides one member whose upstreams are all final (the caller holds the flow run's lock):
-- applies its trigger rule to its upstreams' outcomes (an edge whose condition is false, or
-- whose upstream has no result, counts as skipped), freezes its inputs, and inserts either
-- its pending run(s) or one finished row that says why it did not run. Returns true when
-- what it inserted is already final (its downstream can be decided next). A member with a
-- foreach runs once per item of its inputs (see 0009).
CREATE FUNCTION sisy.flow_decide(fr sisy.flow_runs, m sisy.flow_run_members, why_run text DEFAULT 'flow')
    RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j sisy.jobs;
    frozen jsonb;
    n int;
    ok int;
    failed text[];
    skipped text[];
    notes text;
    verdict text;
    why text;
    attempt_ int;
    inserted int;
    items jsonb;
    item_count int;
BEGIN
    -- One statement over the member's edges: each upstream's outcome (a condition that does
    -- not hold makes it skipped) and result. The decision costs the member's edges.
    SELECT count(*), count(*) FILTER (WHERE e.o = 'success'),
           coalesce(array_agg(e.upstream ORDER BY e.upstream) FILTER (WHERE e.o = 'failure'), '{}'),
           coalesce(array_agg(e.upstream ORDER BY e.upstream) FILTER (WHERE e.o = 'skipped'), '{}'),
           coalesce(jsonb_object_agg(e.upstream, e.res), '{}'),
           coalesce(string_agg(e.note, '' ORDER BY e.upstream), '')
      INTO n, ok, failed, skipped, frozen, notes
      FROM (SELECT c.upstream, c.res, c.note,
                   CASE WHEN c.note IS NOT NULL THEN 'skipped' ELSE c.outcome END AS o
              FROM (SELECT fe.upstream, um.outcome, r.res,
                           CASE WHEN um.outcome = 'success' AND fe.condition IS NOT NULL
                                THEN sisy.flow_condition_fails(r.res, fe.condition, fe.upstream) END AS note
                      FROM sisy.flow_run_edges fe
                      JOIN sisy.flow_run_members um
                        ON um.flow_run_id = fe.flow_run_id AND um.job = fe.upstream
                     CROSS JOIN LATERAL (
                           SELECT CASE WHEN um.items IS NOT NULL
                                       THEN coalesce(jsonb_agg(l.result ORDER BY l.item_index)
                                                     FILTER (WHERE l.item_index IS NOT NULL), '[]')
                                       WHEN bool_and(l.target_host IS NULL) THEN (array_agg(l.result))[1]
                                       ELSE jsonb_object_agg(coalesce(l.target_host, ''), l.result) END AS res
                             FROM (SELECT DISTINCT ON (target_host, item_index) target_host, item_index, result
                                     FROM sisy.runs
                                    WHERE flow_run_id = fr.id AND job_name = fe.upstream
                                      AND attempt >= um.first_attempt
                                    ORDER BY target_host, item_index, attempt DESC) l) r
                     WHERE fe.flow_run_id = fr.id AND fe.job = m.job) c) e;

    IF m.job = fr.root_job THEN
        verdict := 'run';
    ELSIF m.trigger_rule = 'all_done'
       OR (m.trigger_rule = 'all_success' AND ok = n)
       OR (m.trigger_rule = 'one_success' AND ok > 0)
       OR (m.trigger_rule = 'one_failed' AND cardinality(failed) > 0)
       OR (m.trigger_rule = 'none_failed' AND cardinality(failed) = 0) THEN
        verdict := 'run';
    ELSIF cardinality(failed) > 0 AND m.trigger_rule <> 'one_failed' THEN
        verdict := 'upstream_failed';
        why := format('upstream %s failed (trigger_rule %s)',
                      array_to_string(ARRAY(SELECT quote_literal(x) FROM unnest(failed) x), ', '),
                      m.trigger_rule);
    ELSE
        verdict := 'skipped';
        why := CASE WHEN m.trigger_rule = 'one_failed'
                    THEN 'no upstream failed (trigger_rule one_failed): nothing to fall back for'
                    ELSE format('upstream %s skipped or its condition false (trigger_rule %s)',
                                array_to_string(ARRAY(SELECT quote_literal(x) FROM unnest(skipped) x), ', '),
                                m.trigger_rule) END || notes;
    END IF;

    -- A new decision's runs start after every attempt this occurrence of the job has had
    -- (a rerun, or the same job in another flow with the same logical time).
    SELECT coalesce(max(attempt), 0) + 1 INTO attempt_ FROM sisy.runs
     WHERE job_name = m.job AND scheduled_for = fr.scheduled_for;

    -- By id: a job renamed since the flow run opened still runs. Its runs keep the name the
    -- flow run knows it by (outcomes, retries and views find a member's runs by that name).
    SELECT * INTO j FROM sisy.jobs WHERE id = m.job_id;
    IF verdict = 'run' AND NOT FOUND THEN
        verdict := 'cancelled';
        why := format('job %s was deleted before its flow run reached it', quote_literal(m.job));
    ELSIF verdict = 'run' AND j.suspended THEN
        verdict := 'skipped';
        why := format('job %s is suspended', quote_literal(m.job));
    END IF;

    -- Fan-out: the items of the member's foreach over its inputs. An evaluation error or
    -- more than 10,000 items fails the member (its flow run goes on by its rules); no item
    -- is one skipped row that counts as success (items = 0).
    IF verdict = 'run' AND m."foreach" IS NOT NULL THEN
        BEGIN
            -- In strict mode unless the path says `lax`: items come from a list that is
            -- there (lax mode would make a missing or null result one `null` item).
            items := jsonb_path_query_array(frozen,
                CASE WHEN m."foreach"::text ~ '^(lax|strict) ' THEN m."foreach"
                     ELSE ('strict ' || m."foreach"::text)::jsonpath END);
            item_count := jsonb_array_length(items);
        EXCEPTION WHEN OTHERS THEN
            verdict := 'failed';
            why := format('foreach %s over SISY_INPUTS could not be evaluated: %s',
                          quote_literal(m."foreach"::text), SQLERRM);
        END;
        IF item_count > 10000 THEN
            verdict := 'failed';
            why := format('foreach %s gave %s items, more than the 10,000 one member may run: split the list upstream',
                          quote_literal(m."foreach"::text), item_count);
            item_count := NULL;
        ELSIF item_count = 0 THEN
            verdict := 'skipped';
            why := format('foreach %s gave no items: nothing to run', quote_literal(m."foreach"::text));
        END IF;
    END IF;
    UPDATE sisy.flow_run_members
       SET decided = true, first_attempt = attempt_, outcome = NULL, inputs = frozen,
           items = item_count
     WHERE flow_run_id = fr.id AND job = m.job;

    IF verdict <> 'run' THEN
        INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt, due_at, deadline,
                               state, finished_at, error, flow_run_id, inputs)
        VALUES (j.id, m.job, coalesce(j.pool, 'default'), fr.scheduled_for, 'flow', attempt_, now(), now(),
                verdict, now(), why, fr.id, frozen);
        RETURN true;
    END IF;
    IF item_count > 0 THEN
        -- One statement for every item; the inputs stay on the member (the claim reads them
        -- there), not copied into each item's row.
        INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt, due_at, deadline,
                               flow_run_id, item, item_index)
        SELECT j.id, m.job, j.pool, fr.scheduled_for, why_run, attempt_, now(),
               now() + least(j.ttl, interval '100 years'), fr.id, x.item, (x.n - 1)::int
          FROM jsonb_array_elements(items) WITH ORDINALITY AS x (item, n);
        RETURN false;
    END IF;
    IF j.target = 'all' THEN
        INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt, target_host,
                               due_at, deadline, flow_run_id, inputs)
        SELECT j.id, m.job, j.pool, fr.scheduled_for, why_run, attempt_, h.name,
               now(), now() + least(j.ttl, interval '100 years'), fr.id, frozen
          FROM sisy.hosts h
         WHERE j.pool = ANY (h.pools) AND h.lease_until > now() AND NOT h.draining
         ORDER BY h.name;
        GET DIAGNOSTICS inserted = ROW_COUNT;
        IF inserted = 0 THEN
            INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt, due_at, deadline,
                                   state, finished_at, error, flow_run_id, inputs)
            VALUES (j.id, m.job, j.pool, fr.scheduled_for, 'flow', attempt_, now(), now(), 'expired', now(),
                    format('no live, undrained host of pool %s when its flow run reached it', quote_literal(j.pool)),
                    fr.id, frozen);
            RETURN true;
        END IF;
        RETURN false;
    END IF;
    INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt, due_at, deadline,
                           flow_run_id, inputs)
    VALUES (j.id, m.job, j.pool, fr.scheduled_for, why_run, attempt_, now(),
            now() + least(j.ttl, interval '100 years'), fr.id, frozen);
    RETURN false;
END $$;

-- Recounts every member's open upstreams from the recorded outcomes (when a flow run opens,
-- when a rerun reopens it, and in the safety net): the count flow_advance keeps is then
-- exact whatever happened before.
CREATE FUNCTION sisy.flow_recount(fr_id bigint) RETURNS void LANGUAGE sql
    SET search_path = pg_catalog, pg_temp AS $$
    WITH open_ AS (
        SELECT fe.job, count(*) AS n
          FROM sisy.flow_run_edges fe
          JOIN sisy.flow_run_members um ON um.flow_run_id = fe.flow_run_id AND um.job = fe.upstream
         WHERE fe.flow_run_id = fr_id AND um.outcome IS NULL
         GROUP BY fe.job
    ), counted AS (
        SELECT m.job, coalesce(open_.n, 0) AS n
          FROM sisy.flow_run_members m LEFT JOIN open_ ON open_.job = m.job
         WHERE m.flow_run_id = fr_id
    )
    UPDATE sisy.flow_run_members m SET open_upstreams = counted.n
      FROM counted
     WHERE m.flow_run_id = fr_id AND m.job = counted.job AND m.open_upstreams <> counted.n;
$$;

-- Moves a flow run on from members that may have become final (the caller holds the flow
-- run's lock and has checked it is running): records each one's outcome, decides the
-- downstream members whose upstreams are now all final (and on from those recorded final at
-- once), and ends the flow run when no member is open. The work follows the edges of the
-- members decided, not the size of the flow.
CREATE FUNCTION sisy.flow_advance(fr sisy.flow_runs, changed text[]) RETURNS void LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    todo text[] := changed;
    x text;
    m sisy.flow_run_members;
    d sisy.flow_run_members;
    o text;
    root_outcome text;
BEGIN
    WHILE cardinality(todo) > 0 LOOP
        x := todo[1];
        todo := todo[2:];
        SELECT * INTO m FROM sisy.flow_run_members WHERE flow_run_id = fr.id AND job = x;
        CONTINUE WHEN NOT FOUND OR NOT m.decided OR m.outcome IS NOT NULL;
        o := sisy.flow_member_outcome(fr.id, m.job, m.first_attempt, m.continue_on_failure);
        CONTINUE WHEN o IS NULL;
        UPDATE sisy.flow_run_members SET outcome = o WHERE flow_run_id = fr.id AND job = x;
        -- Its downstream members have one open upstream less; those left with none are
        -- decided (the UPDATE runs to completion before the loop: plpgsql keeps its rows).
        FOR d IN UPDATE sisy.flow_run_members dm SET open_upstreams = dm.open_upstreams - 1
                   FROM sisy.flow_run_edges fe
                  WHERE fe.flow_run_id = fr.id AND fe.upstream = x
                    AND dm.flow_run_id = fr.id AND dm.job = fe.job
                 RETURNING dm.*
        LOOP
            CONTINUE WHEN d.decided OR d.open_upstreams > 0;
            IF sisy.flow_decide(fr, d) THEN
                todo := todo || d.job;
            END IF;
        END LOOP;
    END LOOP;

    IF NOT EXISTS (SELECT 1 FROM sisy.flow_run_members WHERE flow_run_id = fr.id AND outcome IS NULL) THEN
        SELECT outcome INTO root_outcome FROM sisy.flow_run_members
         WHERE flow_run_id = fr.id AND job = fr.root_job;
        UPDATE sisy.flow_runs
           SET state = CASE WHEN root_outcome = 'skipped' THEN 'skipped'
                            WHEN EXISTS (SELECT 1 FROM sisy.flow_run_members
                                          WHERE flow_run_id = fr.id AND outcome = 'failure') THEN 'failed'
                            ELSE 'succeeded' END,
               finished_at = now(),
               error = (SELECT 'failed: ' || string_agg(quote_literal(job), ', ' ORDER BY job)
                          FROM sisy.flow_run_members WHERE flow_run_id = fr.id AND outcome = 'failure')
         WHERE id = fr.id;
    END IF;
END $$;

-- A member's run reached a final state (its row is locked by the caller's UPDATE): lock the
-- flow run and move it on, unless it has ended.
CREATE FUNCTION sisy.flow_member_finished(fr_id bigint, member text) RETURNS void LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fr sisy.flow_runs;
BEGIN
    SELECT * INTO fr FROM sisy.flow_runs WHERE id = fr_id FOR UPDATE;
    IF FOUND AND fr.state = 'running' THEN
        PERFORM sisy.flow_advance(fr, ARRAY[member]);
    END IF;
END $$;

-- Before a run is inserted: a run of a flow's root that opens an occurrence (a scheduled
-- one, or sisy.trigger of the root) opens the flow run of that occurrence, snapshotting the
-- graph; the other runs of the same occurrence (the other hosts of a `target = 'all'` root)
-- join it. With overlap = 'forbid' on the root, a flow run opened while an earlier one of
-- the root still runs is recorded `skipped`, and so are its root's runs (every host's).
CREATE FUNCTION sisy.runs_open_flow() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j sisy.jobs;
    fr_id bigint;
    earlier bigint;
    fr_state text;
    why text;
BEGIN
    IF NEW.flow_run_id IS NOT NULL OR NEW.reason NOT IN ('schedule', 'manual') OR NEW.job_id IS NULL
       OR NOT EXISTS (SELECT 1 FROM sisy.dependencies WHERE upstream = NEW.job_name)
       OR EXISTS (SELECT 1 FROM sisy.dependencies WHERE job = NEW.job_name) THEN
        RETURN NEW;
    END IF;
    SELECT * INTO j FROM sisy.jobs WHERE id = NEW.job_id;
    -- overlap = 'forbid': decided before the flow run is inserted, so that a skipped one is
    -- inserted skipped (its one event says so, not `running` then `skipped`). Still running
    -- means a run of it may still run: a flow run opened by a root's run recorded final at
    -- once (missed occurrences) is moved on only when its statement ends, and the scheduler
    -- inserts the next occurrence in that same statement.
    IF j.overlap = 'forbid' THEN
        SELECT f.id INTO earlier FROM sisy.flow_runs f
         WHERE f.root_job = NEW.job_name AND f.state = 'running' AND f.scheduled_for <> NEW.scheduled_for
           AND EXISTS (SELECT 1 FROM sisy.runs r WHERE r.flow_run_id = f.id
                          AND r.state IN ('pending', 'running'))
         ORDER BY f.id LIMIT 1;
        IF earlier IS NOT NULL THEN
            why := format('flow run %s of %s was still running (overlap = forbid)', earlier, quote_literal(NEW.job_name));
        END IF;
    END IF;
    INSERT INTO sisy.flow_runs (root_job, scheduled_for, deadline, state, finished_at, error)
    VALUES (NEW.job_name, NEW.scheduled_for,
            CASE WHEN j.flow_timeout IS NOT NULL THEN now() + least(j.flow_timeout, interval '100 years') END,
            CASE WHEN earlier IS NULL THEN 'running' ELSE 'skipped' END,
            CASE WHEN earlier IS NOT NULL THEN now() END, why)
    ON CONFLICT (root_job, scheduled_for) DO NOTHING
    RETURNING id INTO fr_id;
    IF fr_id IS NULL THEN
        SELECT id, state, error INTO fr_id, fr_state, why FROM sisy.flow_runs
         WHERE root_job = NEW.job_name AND scheduled_for = NEW.scheduled_for;
        NEW.flow_run_id := fr_id;
        -- Another host's run of a flow run already ended (skipped by overlap, cancelled):
        -- it does not run either.
        IF fr_state <> 'running' AND NEW.state = 'pending' THEN
            NEW.state := CASE WHEN fr_state = 'skipped' THEN 'skipped' ELSE 'cancelled' END;
            NEW.finished_at := now();
            NEW.error := coalesce(why, format('its flow run %s had already ended (%s)', fr_id, fr_state));
        END IF;
        RETURN NEW;
    END IF;
    NEW.flow_run_id := fr_id;

    INSERT INTO sisy.flow_run_members (flow_run_id, job, job_id, trigger_rule, continue_on_failure,
                                       decided, first_attempt, foreach)
    WITH RECURSIVE reach (job) AS (
        SELECT NEW.job_name
        UNION
        SELECT d.job FROM sisy.dependencies d JOIN reach ON d.upstream = reach.job
    )
    SELECT fr_id, jb.name, jb.id, jb.trigger_rule, jb.continue_on_failure,
           jb.name = NEW.job_name, NEW.attempt,
           CASE WHEN jb.name <> NEW.job_name THEN jb.foreach END
      FROM reach JOIN sisy.jobs jb ON jb.name = reach.job;
    -- Edges between members only: a member's edge from outside its flow cannot exist (one
    -- root per job), and if one did it must not make the member wait for good.
    INSERT INTO sisy.flow_run_edges (flow_run_id, job, upstream, condition)
    SELECT fr_id, d.job, d.upstream, d.condition
      FROM sisy.dependencies d
      JOIN sisy.flow_run_members m ON m.flow_run_id = fr_id AND m.job = d.job
      JOIN sisy.flow_run_members u ON u.flow_run_id = fr_id AND u.job = d.upstream;
    -- Nothing has an outcome yet: every edge into a member is open.
    UPDATE sisy.flow_run_members m SET open_upstreams = c.n
      FROM (SELECT job, count(*) AS n FROM sisy.flow_run_edges WHERE flow_run_id = fr_id GROUP BY job) c
     WHERE m.flow_run_id = fr_id AND m.job = c.job;

    IF earlier IS NOT NULL AND NEW.state = 'pending' THEN
        NEW.state := 'skipped';
        NEW.finished_at := now();
        NEW.error := why;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER runs_open_flow BEFORE INSERT ON sisy.runs
    FOR EACH ROW EXECUTE FUNCTION sisy.runs_open_flow();

-- As in 0007, with flows: the event carries the flow run; a retry carries the flow run and
-- the frozen inputs, counts its attempts from its member's current decision, and is not made
-- in a flow run that has ended; a root's run recorded final at insert moves its (new) flow
-- run on here, any other end in runs_move_flows below.
CREATE OR REPLACE FUNCTION sisy.runs_state_changed() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j sisy.jobs;
    delay interval;
    limit_ constant interval := interval '100 years';
    since int := 1;
    tries int;
    next_attempt int;
BEGIN
    PERFORM pg_notify('sisy_events', json_build_object(
        'run_id', NEW.id, 'job', left(NEW.job_name, 1000),
        'old_state', CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE OLD.state END,
        'new_state', NEW.state, 'host', NEW.host, 'flow_run_id', NEW.flow_run_id)::text);

    IF TG_OP = 'INSERT' THEN
        IF NEW.state = 'pending' THEN
            PERFORM pg_notify('sisy_wakeup', NEW.pool);
        ELSIF NEW.flow_run_id IS NOT NULL AND NEW.state <> 'running' AND NEW.reason <> 'flow' THEN
            -- A root's occurrence recorded final at once (missed, or skipped by overlap).
            BEGIN
                PERFORM sisy.flow_member_finished(NEW.flow_run_id, NEW.job_name);
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'sisy: flow run % could not decide after run % (%): %; the guardians'' safety net tries again',
                    NEW.flow_run_id, NEW.id, NEW.job_name, SQLERRM;
            END;
        END IF;
        RETURN NULL;
    END IF;

    -- A retry follows a failed, timed-out or lost attempt, and a run killed by its guardian's
    -- shutdown (kill_requested_at is NULL then); never one an operator or `replace` killed.
    IF NOT NEW.no_retry AND NEW.job_id IS NOT NULL AND (
           NEW.state IN ('failed', 'timed_out', 'lost')
        OR (NEW.state = 'killed' AND NEW.kill_requested_at IS NULL))
       AND (NEW.flow_run_id IS NULL
            OR EXISTS (SELECT 1 FROM sisy.flow_runs WHERE id = NEW.flow_run_id AND state = 'running')) THEN
        tries := NEW.attempt;
        next_attempt := NEW.attempt + 1;
        IF NEW.flow_run_id IS NOT NULL THEN
            -- In a flow run, attempts count from the member's current decision, and the next
            -- attempt number follows every run of the occurrence: the same job may have runs
            -- at the same logical time in another flow run (moved between two flows whose
            -- roots share a schedule), numbered in between.
            SELECT coalesce(max(first_attempt), 1) INTO since FROM sisy.flow_run_members
             WHERE flow_run_id = NEW.flow_run_id AND job = NEW.job_name;
            SELECT count(*) INTO tries FROM sisy.runs
             WHERE flow_run_id = NEW.flow_run_id AND job_name = NEW.job_name AND attempt >= since
               AND target_host IS NOT DISTINCT FROM NEW.target_host
               AND item_index IS NOT DISTINCT FROM NEW.item_index;
            SELECT max(attempt) + 1 INTO next_attempt FROM sisy.runs
             WHERE job_name = NEW.job_name AND scheduled_for = NEW.scheduled_for
               AND target_host IS NOT DISTINCT FROM NEW.target_host
               AND item_index IS NOT DISTINCT FROM NEW.item_index;
        END IF;
        SELECT * INTO j FROM sisy.jobs WHERE id = NEW.job_id;
        IF FOUND AND tries <= j.max_retries THEN
            -- Doubling per attempt, at most 2^16 times and at most the limit: no count of
            -- retries and no delay can overflow the interval or the timestamps below.
            delay := least(least(j.retry_delay, limit_)
                           * power(2, least(greatest(tries - 1, 0), 16))::int, limit_);
            INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt,
                                   target_host, due_at, deadline, flow_run_id, inputs, item, item_index)
            VALUES (NEW.job_id, NEW.job_name, j.pool, NEW.scheduled_for, 'retry', next_attempt,
                    NEW.target_host, now() + delay, now() + delay + least(j.ttl, limit_),
                    NEW.flow_run_id, NEW.inputs, NEW.item, NEW.item_index)
            ON CONFLICT ON CONSTRAINT runs_occurrence_key DO NOTHING;
        END IF;
    END IF;
    -- The flow run moves on in runs_move_flows, once per statement (a retry pending makes
    -- its member's outcome wait).
    RETURN NULL;
END $$;

-- A statement that ended runs of flow runs (a guardian's result, a heartbeat declaring a
-- dead host's runs lost, a tick expiring pending runs) moves each of those flow runs on,
-- after the rows' own triggers (retries) and in flow run id order: two statements ending
-- runs of the same flow runs lock them in the same order, never in opposite orders
-- (a deadlock, one statement aborted). An AFTER STATEMENT trigger, because a row trigger
-- locks in the order the rows happen to be updated.
CREATE FUNCTION sisy.runs_move_flows() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f record;
    fr sisy.flow_runs;
BEGIN
    -- No join of the two transition tables: they carry no statistics, and the planner's
    -- nested loop over them made one statement ending 10,000 runs take 23 s; NOT IN over
    -- a subquery is hashed.
    FOR f IN SELECT n.flow_run_id, array_agg(DISTINCT n.job_name ORDER BY n.job_name) AS jobs
               FROM new_runs n
              WHERE n.flow_run_id IS NOT NULL AND n.state NOT IN ('pending', 'running')
                AND (n.id, n.state) NOT IN (SELECT o.id, o.state FROM old_runs o)
              GROUP BY n.flow_run_id ORDER BY n.flow_run_id
    LOOP
        -- A decision that fails must not fail the statement recording these runs' ends (their
        -- results would never land, and the statement may be a heartbeat or a tick serving a
        -- whole pool): it is said in the server log and left to the safety net.
        BEGIN
            SELECT * INTO fr FROM sisy.flow_runs WHERE id = f.flow_run_id FOR UPDATE;
            IF FOUND AND fr.state = 'running' THEN
                PERFORM sisy.flow_advance(fr, f.jobs);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sisy: flow run % could not decide after % ended: %; the guardians'' safety net tries again',
                f.flow_run_id, array_to_string(f.jobs, ', '), SQLERRM;
        END;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER runs_move_flows AFTER UPDATE ON sisy.runs
    REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION sisy.runs_move_flows();

-- Stops a running flow run (cancel, timeout): locks its open runs in id order, then the flow
-- run; pending members `cancelled`, running ones asked to die (`killed`, never retried: the
-- kill was requested), nothing decided any more. False when it had already ended.
CREATE FUNCTION sisy.flow_stop(fr_id bigint, new_state text, why text) RETURNS boolean LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fr sisy.flow_runs;
    killed record;
BEGIN
    PERFORM 1 FROM sisy.runs WHERE flow_run_id = fr_id AND state IN ('pending', 'running')
      ORDER BY id FOR UPDATE;
    SELECT * INTO fr FROM sisy.flow_runs WHERE id = fr_id FOR UPDATE;
    IF NOT FOUND OR fr.state <> 'running' THEN
        RETURN false;
    END IF;
    UPDATE sisy.flow_runs SET state = new_state, finished_at = now(), error = why WHERE id = fr_id;
    UPDATE sisy.runs SET state = 'cancelled', finished_at = now(), kill_requested_at = now(),
                         error = format('not started: %s', why)
     WHERE flow_run_id = fr_id AND state = 'pending';
    FOR killed IN UPDATE sisy.runs SET kill_requested_at = coalesce(kill_requested_at, now()),
                                       error = coalesce(error, format('killed: %s', why))
                   WHERE flow_run_id = fr_id AND state = 'running'
                  RETURNING id
    LOOP
        PERFORM pg_notify('sisy_kill', killed.id::text);
    END LOOP;
    RETURN true;
END $$;

CREATE FUNCTION sisy.cancel_flow(flow_run_id bigint) RETURNS void LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fr sisy.flow_runs;
BEGIN
    IF cancel_flow.flow_run_id IS NULL THEN
        RAISE EXCEPTION 'sisy.cancel_flow: flow_run_id must not be NULL: give the id of a flow run (sisy.flow_status.id)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO fr FROM sisy.flow_runs WHERE id = cancel_flow.flow_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no flow run with id %', cancel_flow.flow_run_id USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT sisy.flow_stop(fr.id, 'cancelled', format('flow run %s was cancelled by sisy.cancel_flow', fr.id)) THEN
        SELECT * INTO fr FROM sisy.flow_runs WHERE id = fr.id;
        RAISE EXCEPTION 'flow run % already ended (state %): nothing to cancel', fr.id, fr.state
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END $$;

-- A new attempt of every member of an ended flow run that did not succeed (with from_job: of
-- that job and everything downstream of it), keeping the results of the others. Members
-- whose upstreams are all kept are decided now; the others when their upstreams are final.
-- A fan-out member whose upstreams are kept runs again only its items that did not succeed;
-- a rerun from a job runs it, and all its items, again.
CREATE FUNCTION sisy.rerun_flow(flow_run_id bigint, from_job text DEFAULT NULL) RETURNS int LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fr sisy.flow_runs;
    chosen text[];
    still text;
    m sisy.flow_run_members;
    todo text[] := '{}';
    root_timeout interval;
BEGIN
    IF rerun_flow.flow_run_id IS NULL THEN
        RAISE EXCEPTION 'sisy.rerun_flow: flow_run_id must not be NULL: give the id of a flow run (sisy.flow_status.id)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM 1 FROM sisy.runs WHERE runs.flow_run_id = rerun_flow.flow_run_id
       AND state IN ('pending', 'running') ORDER BY id FOR UPDATE;
    SELECT * INTO fr FROM sisy.flow_runs WHERE id = rerun_flow.flow_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no flow run with id %', rerun_flow.flow_run_id USING ERRCODE = 'no_data_found';
    END IF;
    IF fr.state = 'running' THEN
        RAISE EXCEPTION 'flow run % is still running: wait for it to end, or cancel it with sisy.cancel_flow first', fr.id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT string_agg(id::text, ', ' ORDER BY id) INTO still FROM sisy.runs
     WHERE runs.flow_run_id = fr.id AND state IN ('pending', 'running');
    IF still IS NOT NULL THEN
        RAISE EXCEPTION 'flow run % still has runs that have not ended (%): wait for them to end', fr.id, still
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    IF from_job IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM sisy.flow_run_members WHERE flow_run_members.flow_run_id = fr.id
                          AND job = from_job) THEN
            RAISE EXCEPTION 'job ''%'' is not a member of flow run % (members: %)', from_job, fr.id,
                (SELECT string_agg(job, ', ' ORDER BY job) FROM sisy.flow_run_members
                  WHERE flow_run_members.flow_run_id = fr.id)
                USING ERRCODE = 'no_data_found';
        END IF;
        WITH RECURSIVE down (job) AS (
            SELECT from_job
            UNION
            SELECT fe.job FROM sisy.flow_run_edges fe JOIN down ON fe.upstream = down.job
             WHERE fe.flow_run_id = fr.id
        )
        SELECT array_agg(job ORDER BY job) INTO chosen FROM down;
    ELSE
        SELECT coalesce(array_agg(m2.job ORDER BY m2.job), '{}') INTO chosen
          FROM sisy.flow_run_members m2
         WHERE m2.flow_run_id = fr.id
           AND NOT (m2.decided AND coalesce((
                   SELECT bool_and(l.state = 'succeeded') FROM (
                       SELECT DISTINCT ON (target_host, item_index) state FROM sisy.runs
                        WHERE runs.flow_run_id = fr.id AND job_name = m2.job AND attempt >= m2.first_attempt
                        ORDER BY target_host, item_index, attempt DESC) l), false));
    END IF;
    IF cardinality(chosen) = 0 THEN
        RETURN 0;
    END IF;

    UPDATE sisy.flow_run_members SET decided = false, outcome = NULL
     WHERE flow_run_members.flow_run_id = fr.id AND job = ANY (chosen);
    SELECT flow_timeout INTO root_timeout FROM sisy.jobs WHERE name = fr.root_job;
    UPDATE sisy.flow_runs
       SET state = 'running', finished_at = NULL, error = NULL, checked_at = now(),
           deadline = CASE WHEN root_timeout IS NOT NULL THEN now() + least(root_timeout, interval '100 years') END
     WHERE id = fr.id
    RETURNING * INTO fr;

    -- Members kept whose end came after the flow run stopped (a run that still succeeded
    -- after a cancel) have no outcome recorded: record it now, and decide what follows.
    PERFORM sisy.flow_recount(fr.id);
    PERFORM sisy.flow_advance(fr, ARRAY(
        SELECT job FROM sisy.flow_run_members m2
         WHERE m2.flow_run_id = fr.id AND m2.decided AND m2.outcome IS NULL ORDER BY job));
    FOR m IN SELECT * FROM sisy.flow_run_members m2
              WHERE m2.flow_run_id = fr.id AND m2.job = ANY (chosen) AND NOT m2.decided
                AND m2.open_upstreams = 0
              ORDER BY m2.job
    LOOP
        IF m.items > 0 AND from_job IS NULL THEN
            -- A fan-out member whose inputs are kept runs again only its items that did not
            -- succeed, each as its next attempt; its succeeded items stay.
            UPDATE sisy.flow_run_members SET decided = true
             WHERE flow_run_members.flow_run_id = fr.id AND job = m.job;
            INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt, due_at,
                                   deadline, flow_run_id, item, item_index)
            SELECT j.id, m.job, j.pool, fr.scheduled_for, 'retry', l.attempt + 1, now(),
                   now() + least(j.ttl, interval '100 years'), fr.id, l.item, l.item_index
              FROM (SELECT DISTINCT ON (item_index) item_index, item, attempt, state FROM sisy.runs
                     WHERE runs.flow_run_id = fr.id AND job_name = m.job AND attempt >= m.first_attempt
                       AND item_index IS NOT NULL
                     ORDER BY item_index, attempt DESC) l
              JOIN sisy.jobs j ON j.id = m.job_id
             WHERE l.state <> 'succeeded'
             ORDER BY l.item_index;
            -- Its outcome is read again (from the old attempts, when the job is gone).
            todo := todo || m.job;
            CONTINUE;
        END IF;
        IF sisy.flow_decide(fr, m, CASE WHEN m.job = fr.root_job THEN 'retry' ELSE 'flow' END) THEN
            todo := todo || m.job;
        END IF;
    END LOOP;
    PERFORM sisy.flow_advance(fr, todo);
    RETURN cardinality(chosen);
END $$;

-- Re-decides one running flow run from what its runs say (the safety net: a member final but
-- not moved on, e.g. a run changed with triggers disabled): every decided member whose outcome
-- is not recorded, and every undecided member whose upstreams are all final.
CREATE FUNCTION sisy.flow_redecide(fr_id bigint) RETURNS void LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fr sisy.flow_runs;
    m sisy.flow_run_members;
    todo text[];
BEGIN
    SELECT * INTO fr FROM sisy.flow_runs WHERE id = fr_id FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR fr.state <> 'running' THEN
        RETURN;
    END IF;
    UPDATE sisy.flow_runs SET checked_at = now() WHERE id = fr.id;
    PERFORM sisy.flow_recount(fr.id);
    SELECT coalesce(array_agg(job ORDER BY job), '{}') INTO todo FROM sisy.flow_run_members
     WHERE flow_run_id = fr.id AND decided AND outcome IS NULL;
    PERFORM sisy.flow_advance(fr, todo);
    SELECT * INTO fr FROM sisy.flow_runs WHERE id = fr.id;
    LOOP
        EXIT WHEN fr.state <> 'running';
        SELECT * INTO m FROM sisy.flow_run_members m2
         WHERE m2.flow_run_id = fr.id AND NOT m2.decided AND m2.open_upstreams = 0
         ORDER BY m2.job LIMIT 1;
        EXIT WHEN NOT FOUND;
        IF sisy.flow_decide(fr, m) THEN
            PERFORM sisy.flow_advance(fr, ARRAY[m.job]);
        END IF;
        SELECT * INTO fr FROM sisy.flow_runs WHERE id = fr.id;
    END LOOP;
    -- A flow run with nothing open ends here (e.g. every member's outcome was recorded).
    IF fr.state = 'running' THEN
        PERFORM sisy.flow_advance(fr, '{}');
    END IF;
END $$;

-- The guardians' safety net, called from their tick when `sisy.flows_due_in()` says
-- something is due: flow runs past their deadline are timed out (running members killed,
-- pending ones cancelled), and running flow runs not looked at for `recheck` are re-decided.
-- Returns how many flow runs it handled. Its cost follows what is due (partial indexes on
-- running flow runs).
CREATE FUNCTION sisy.flows_tend(recheck interval DEFAULT '30 seconds', batch int DEFAULT 20)
    RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f record;
    n int := 0;
BEGIN
    -- Each flow run on its own: one that cannot be handled (a defect) is said in its error
    -- and looked at again a minute later, never a failure of the whole tick.
    FOR f IN SELECT id, deadline FROM sisy.flow_runs
              WHERE state = 'running' AND deadline <= now()
              ORDER BY deadline LIMIT greatest(batch, 0)
    LOOP
        BEGIN
            IF sisy.flow_stop(f.id, 'timed_out', format('flow_timeout passed (deadline %s)', f.deadline)) THEN
                n := n + 1;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            UPDATE sisy.flow_runs SET deadline = now() + interval '1 minute',
                   error = format('timing out failed (%s); trying again', SQLERRM)
             WHERE id = f.id;
        END;
    END LOOP;
    FOR f IN SELECT id FROM sisy.flow_runs
              WHERE state = 'running' AND checked_at <= now() - recheck
              ORDER BY checked_at LIMIT greatest(batch, 0)
    LOOP
        BEGIN
            PERFORM sisy.flow_redecide(f.id);
        EXCEPTION WHEN OTHERS THEN
            UPDATE sisy.flow_runs SET checked_at = now() + interval '1 minute',
                   error = format('deciding failed (%s); trying again', SQLERRM)
             WHERE id = f.id;
        END;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Seconds until the safety net has something to do (a deadline, or a recheck), NULL when no
-- flow run is running. Two index lookups.
CREATE FUNCTION sisy.flows_due_in(recheck interval DEFAULT '30 seconds') RETURNS float8
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT extract(epoch FROM least(
        (SELECT deadline FROM sisy.flow_runs WHERE state = 'running' AND deadline IS NOT NULL
          ORDER BY deadline LIMIT 1),
        (SELECT checked_at + recheck FROM sisy.flow_runs WHERE state = 'running'
          ORDER BY checked_at LIMIT 1)) - now())::float8
$$;

-- A retry of a flow's run belongs to its flow run: sisy.rerun_flow does it there (and
-- decides what follows); sisy.retry refuses it rather than run it outside its flow.
CREATE OR REPLACE FUNCTION sisy.retry(run_id bigint) RETURNS bigint LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r sisy.runs;
    j sisy.jobs;
    next_attempt int;
    new_id bigint;
BEGIN
    SELECT * INTO r FROM sisy.runs WHERE id = retry.run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no run with id %', retry.run_id USING ERRCODE = 'no_data_found';
    END IF;
    IF r.state IN ('pending', 'running') THEN
        RAISE EXCEPTION 'run % is still % : wait for it to finish or kill it first', r.id, r.state
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF r.flow_run_id IS NOT NULL THEN
        RAISE EXCEPTION 'run % belongs to flow run %: use sisy.rerun_flow(%, ''%'') to run it again within its flow, or sisy.trigger(''%'') to run the job alone',
            r.id, r.flow_run_id, r.flow_run_id, r.job_name, r.job_name
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT * INTO j FROM sisy.jobs WHERE id = r.job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the job of run % (''%'') no longer exists', r.id, r.job_name
            USING ERRCODE = 'no_data_found';
    END IF;
    SELECT max(attempt) + 1 INTO next_attempt FROM sisy.runs
     WHERE job_name = r.job_name AND scheduled_for = r.scheduled_for
       AND target_host IS NOT DISTINCT FROM r.target_host;
    INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt, target_host, due_at, deadline)
    VALUES (j.id, j.name, j.pool, r.scheduled_for, 'retry', next_attempt, r.target_host, now(), now() + j.ttl)
    RETURNING id INTO new_id;
    RETURN new_id;
END $$;

-- Only the owner, and the roles `sisy db roles` grants (sql/roles.sql), may call these; the
-- engine's inner functions are called by the triggers above and by nobody else.
REVOKE EXECUTE ON FUNCTION sisy.cancel_flow(bigint), sisy.rerun_flow(bigint, text),
    sisy.flows_tend(interval, int), sisy.flows_due_in(interval),
    sisy.flow_member_outcome(bigint, text, int, boolean),
    sisy.flow_member_outcome_of(bigint, text, int, boolean),
    sisy.flow_condition_fails(jsonb, jsonpath, text),
    sisy.flow_decide(sisy.flow_runs, sisy.flow_run_members, text),
    sisy.flow_advance(sisy.flow_runs, text[]), sisy.flow_member_finished(bigint, text),
    sisy.runs_move_flows(),
    sisy.flow_stop(bigint, text, text), sisy.flow_redecide(bigint), sisy.flow_recount(bigint)
    FROM PUBLIC;

-- As in 0001, and a change of max_concurrency wakes the pool too: runs held back by the cap
-- may start at once when it is raised.
CREATE OR REPLACE FUNCTION sisy.jobs_wakeup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.next_due IS NULL OR NEW.suspended IS DISTINCT FROM OLD.suspended
       OR NEW.pool IS DISTINCT FROM OLD.pool
       OR NEW.max_concurrency IS DISTINCT FROM OLD.max_concurrency THEN
        PERFORM pg_notify('sisy_wakeup', NEW.pool);
    END IF;
    RETURN NULL;
END $$;

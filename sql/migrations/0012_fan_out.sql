-- 0012: fan-out and fan-in (SPEC §7): a member that runs once per item of a list known only
-- when it is decided, and a fleet-wide cap on a job's running runs.
--
-- * `sisy.jobs.foreach`: a jsonpath over the member's SISY_INPUTS; one run per item, each with
--   `sisy.runs.item` (the item) and `item_index` (0, 1, …). The unique key covers the item,
--   so no item runs twice in one flow run whatever the number of guardians. At most 10,000
--   items; an empty list is one `skipped` row and counts as success. The path is evaluated
--   in strict mode unless it says `lax`: a missing key or a result that is not a list fails
--   the member (lax mode would run one `null` item for a missing result).
-- * FOREACH is a PL/pgSQL keyword: the column is written "foreach" (quoted) in PL/pgSQL
--   expressions.
-- * `sisy.jobs.max_concurrency`: at most that many runs of the job running at once across
--   the fleet, items included, enforced at admission under the job's row lock.

ALTER TABLE sisy.jobs
    ADD COLUMN foreach jsonpath,
    ADD COLUMN max_concurrency int;

ALTER TABLE sisy.runs
    ADD COLUMN item jsonb,
    ADD COLUMN item_index int CHECK (item_index >= 0);

-- The same name: statements and triggers name it in ON CONFLICT.
ALTER TABLE sisy.runs DROP CONSTRAINT runs_occurrence_key;
ALTER TABLE sisy.runs ADD CONSTRAINT runs_occurrence_key
    UNIQUE NULLS NOT DISTINCT (job_name, scheduled_for, target_host, item_index, attempt);

ALTER TABLE sisy.flow_run_members
    ADD COLUMN foreach jsonpath,
    -- The number of items of its current decision (0: an empty list); NULL: no foreach.
    ADD COLUMN items int;

CREATE OR REPLACE FUNCTION sisy.jobs_validate_flow() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ups text;
BEGIN
    IF NEW.trigger_rule NOT IN ('all_success', 'all_done', 'one_success', 'one_failed', 'none_failed') THEN
        RAISE EXCEPTION 'sisy.jobs.trigger_rule must be one of all_success, all_done, one_success, one_failed, none_failed; got ''%''',
            NEW.trigger_rule USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.flow_timeout IS NOT NULL AND NEW.flow_timeout <= interval '0' THEN
        RAISE EXCEPTION 'sisy.jobs.flow_timeout must be positive or NULL, got %', NEW.flow_timeout
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.flow_timeout > interval '100 years' THEN
        RAISE EXCEPTION 'sisy.jobs.flow_timeout must be at most 100 years (or NULL for no limit), got %',
            NEW.flow_timeout USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.max_concurrency IS NOT NULL AND NEW.max_concurrency < 1 THEN
        RAISE EXCEPTION 'sisy.jobs.max_concurrency must be at least 1 (or NULL for no limit), got %',
            NEW.max_concurrency USING ERRCODE = 'check_violation';
    END IF;
    IF NEW."foreach" IS NOT NULL AND NEW.target = 'all' THEN
        RAISE EXCEPTION 'sisy.jobs.foreach: job ''%'' targets all hosts, and its items run on any host of the pool: use target ''any''',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW."foreach" IS NOT NULL THEN
        BEGIN
            PERFORM jsonb_path_query_array('{}', NEW."foreach", '{}', true);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'sisy.jobs.foreach: % cannot be evaluated: %: write a path over SISY_INPUTS, e.g. ''$.list_files.files[*]''',
                quote_literal(NEW."foreach"::text), SQLERRM USING ERRCODE = 'check_violation';
        END;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.schedule IS NOT NULL AND OLD.schedule IS NULL THEN
        SELECT string_agg(quote_literal(upstream), ', ' ORDER BY upstream) INTO ups
          FROM sisy.dependencies WHERE job = OLD.name;
        IF ups IS NOT NULL THEN
            RAISE EXCEPTION 'sisy.jobs.schedule: job ''%'' runs after % in a flow, so it has no schedule of its own: schedule the flow''s root, or delete its dependencies first',
                OLD.name, ups USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER jobs_validate_flow_update ON sisy.jobs;
CREATE TRIGGER jobs_validate_flow_update BEFORE UPDATE ON sisy.jobs
    FOR EACH ROW WHEN ((OLD.trigger_rule, OLD.flow_timeout, OLD.schedule, OLD.foreach::text,
                        OLD.max_concurrency, OLD.target)
                       IS DISTINCT FROM (NEW.trigger_rule, NEW.flow_timeout, NEW.schedule,
                        NEW.foreach::text, NEW.max_concurrency, NEW.target))
    EXECUTE FUNCTION sisy.jobs_validate_flow();

-- A member's runs still open: how a member's outcome is known to be open at a glance.
CREATE INDEX runs_flow_open ON sisy.runs (flow_run_id, job_name) WHERE state IN ('pending', 'running');

ALTER TABLE sisy.flow_run_members
    -- The inputs frozen by its current decision: its item runs read them from here (one copy
    -- per member, not one per item).
    ADD COLUMN inputs jsonb;

-- The outcome of a member, as in 0010, over the last attempt of each item too; a fan-out
-- member with an empty list (items = 0) succeeded.
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

CREATE OR REPLACE FUNCTION sisy.flow_member_outcome(fr_id bigint, member text, since int, keep_going boolean)
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



-- As in 0010, with fan-out: a member with a foreach runs once per item.
CREATE OR REPLACE FUNCTION sisy.flow_decide(fr sisy.flow_runs, m sisy.flow_run_members, why_run text DEFAULT 'flow')
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

-- As in 0010, with fan-out: each item retries on its own (its attempts counted and
-- numbered per item), carrying its item.
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

-- As in 0010, with fan-out: a rerun of what did not succeed runs again only the failed items
-- of a fan-out member whose upstreams are kept; a rerun from a job runs it (and all its
-- items) again.
CREATE OR REPLACE FUNCTION sisy.rerun_flow(flow_run_id bigint, from_job text DEFAULT NULL) RETURNS int LANGUAGE plpgsql
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

-- As in 0011, with fan-out: the last attempt of each item too, and a fan-out member's items
-- counted (`items`: how many its decision made, 0 for an empty list; NULL without foreach).
-- The hosts of a member's runs are listed once each, and its errors cut at 2,000 characters
-- (10,000 items may each have one).
CREATE OR REPLACE VIEW sisy.flow_members AS
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

-- As in 0010, with the members' foreach in the snapshot (a root runs once: it has no inputs).
CREATE OR REPLACE FUNCTION sisy.runs_open_flow() RETURNS trigger LANGUAGE plpgsql
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

REVOKE EXECUTE ON FUNCTION sisy.flow_member_outcome_of(bigint, text, int, boolean) FROM PUBLIC;

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

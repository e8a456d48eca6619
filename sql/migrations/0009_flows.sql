-- 0009: flows, declared (SPEC §7): the dependencies between jobs, the new job columns, the
-- flow runs with the snapshot of their graph, and the run columns that carry a flow.
-- The engine that decides members is 0010, the views 0011.
--
-- Fan-out and fan-in:
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
--
-- * `sisy.dependencies (job, upstream, condition)`: "job runs after upstream". Every edge is
--   validated under a transaction-level advisory lock, so that two sessions adding the two
--   halves of a cycle cannot both pass: the second waits, then sees the first.
-- * A flow run snapshots its graph when it opens (`flow_run_members`, `flow_run_edges`):
--   editing the graph changes later flow runs only, and an old flow run plots as it ran.
--   `flow_run_members` also holds each member's progress: `decided` (its run or its verdict
--   exists), `first_attempt` (the attempt its current decision started with: runs below it
--   belong to an earlier decision, before a rerun), `outcome` (success | failure | skipped,
--   once final, as its downstream reads it), `open_upstreams` (its upstreams without an
--   outcome: kept under the flow run's lock, recounted by a rerun and by the safety net).

ALTER TABLE sisy.jobs
    ADD COLUMN trigger_rule text NOT NULL DEFAULT 'all_success',
    ADD COLUMN continue_on_failure boolean NOT NULL DEFAULT false,
    ADD COLUMN flow_timeout interval,
    ADD COLUMN foreach jsonpath,
    ADD COLUMN max_concurrency int;

CREATE TABLE sisy.dependencies (
    job       text NOT NULL REFERENCES sisy.jobs (name) ON UPDATE CASCADE ON DELETE CASCADE,
    upstream  text NOT NULL REFERENCES sisy.jobs (name) ON UPDATE CASCADE,
    condition jsonpath,
    PRIMARY KEY (job, upstream)
);
-- Downstream walks (decisions, roots, cycles) read edges by their upstream.
CREATE INDEX dependencies_upstream ON sisy.dependencies (upstream);

CREATE TABLE sisy.flow_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    root_job      text NOT NULL,
    scheduled_for timestamptz NOT NULL,
    state         text NOT NULL DEFAULT 'running' CHECK (state IN (
                      'running', 'succeeded', 'failed', 'skipped', 'cancelled', 'timed_out')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    -- created_at + the root's flow_timeout; NULL: no limit.
    deadline      timestamptz,
    error         text,
    -- When the guardians' safety net last re-decided it (sisy.flows_tend).
    checked_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (root_job, scheduled_for)
);
-- The safety net reads running flow runs only: by deadline, and by when it last looked.
CREATE INDEX flow_runs_deadline ON sisy.flow_runs (deadline) WHERE state = 'running' AND deadline IS NOT NULL;
CREATE INDEX flow_runs_checked ON sisy.flow_runs (checked_at) WHERE state = 'running';
-- Listings per root, newest first.
CREATE INDEX flow_runs_root ON sisy.flow_runs (root_job, id DESC);
-- overlap = 'forbid' looks for a running flow run of the root at every occurrence: through
-- the running ones only, not the root's history.
CREATE INDEX flow_runs_running_root ON sisy.flow_runs (root_job) WHERE state = 'running';
-- Housekeeping deletes old finished flow runs.
CREATE INDEX flow_runs_finished ON sisy.flow_runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE sisy.flow_run_members (
    flow_run_id         bigint NOT NULL REFERENCES sisy.flow_runs (id) ON DELETE CASCADE,
    job                 text NOT NULL,
    -- The job when the flow run opened (a rename keeps it; a deletion makes it unknown).
    job_id              bigint,
    trigger_rule        text NOT NULL,
    continue_on_failure boolean NOT NULL,
    decided             boolean NOT NULL DEFAULT false,
    first_attempt       int NOT NULL DEFAULT 1,
    -- How many of its upstreams have no outcome yet: it is decided when this reaches 0.
    open_upstreams      int NOT NULL DEFAULT 0,
    outcome             text CHECK (outcome IN ('success', 'failure', 'skipped')),
    foreach             jsonpath,
    -- The number of items of its current decision (0: an empty list); NULL: no foreach.
    items               int,
    -- The inputs frozen by its current decision: its item runs read them from here (one copy
    -- per member, not one per item).
    inputs              jsonb,
    PRIMARY KEY (flow_run_id, job)
);
-- "Is anything of this flow run still open?": the end check reads this, not every member.
CREATE INDEX flow_run_members_open ON sisy.flow_run_members (flow_run_id) WHERE outcome IS NULL;

CREATE TABLE sisy.flow_run_edges (
    flow_run_id bigint NOT NULL REFERENCES sisy.flow_runs (id) ON DELETE CASCADE,
    job         text NOT NULL,
    upstream    text NOT NULL,
    condition   jsonpath,
    PRIMARY KEY (flow_run_id, job, upstream)
);
CREATE INDEX flow_run_edges_upstream ON sisy.flow_run_edges (flow_run_id, upstream);

-- Runs carry their flow run, the inputs frozen when their member was decided, and the result
-- their job wrote. `upstream_failed` is a final state (a member that did not run because an
-- upstream failed); `flow` is the reason of a run a flow decided.
ALTER TABLE sisy.runs
    ADD COLUMN flow_run_id bigint REFERENCES sisy.flow_runs (id) ON DELETE SET NULL,
    ADD COLUMN inputs jsonb,
    ADD COLUMN result jsonb,
    ADD COLUMN item jsonb,
    ADD COLUMN item_index int CHECK (item_index >= 0);
-- The same name, covering the item: statements and triggers name it in ON CONFLICT.
ALTER TABLE sisy.runs DROP CONSTRAINT runs_occurrence_key;
ALTER TABLE sisy.runs ADD CONSTRAINT runs_occurrence_key
    UNIQUE NULLS NOT DISTINCT (job_name, scheduled_for, target_host, item_index, attempt);
ALTER TABLE sisy.runs DROP CONSTRAINT runs_state_check;
ALTER TABLE sisy.runs ADD CONSTRAINT runs_state_check CHECK (state IN (
    'pending', 'running', 'succeeded', 'failed', 'timed_out', 'killed', 'lost', 'expired',
    'skipped', 'cancelled', 'upstream_failed'));
ALTER TABLE sisy.runs DROP CONSTRAINT runs_reason_check;
ALTER TABLE sisy.runs ADD CONSTRAINT runs_reason_check CHECK (
    reason IN ('schedule', 'manual', 'retry', 'flow'));
-- A member's runs in its flow run (outcomes, results, cancel, the views).
CREATE INDEX runs_flow ON sisy.runs (flow_run_id, job_name) WHERE flow_run_id IS NOT NULL;
-- A member's runs still open: how a member's outcome is known to be open at a glance.
CREATE INDEX runs_flow_open ON sisy.runs (flow_run_id, job_name) WHERE state IN ('pending', 'running');

-- The new job columns, checked like the others (0007) with a message naming the column. A
-- job that runs after another cannot get a schedule of its own.
CREATE FUNCTION sisy.jobs_validate_flow() RETURNS trigger LANGUAGE plpgsql
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

CREATE TRIGGER jobs_validate_flow_insert BEFORE INSERT ON sisy.jobs
    FOR EACH ROW EXECUTE FUNCTION sisy.jobs_validate_flow();
CREATE TRIGGER jobs_validate_flow_update BEFORE UPDATE ON sisy.jobs
    FOR EACH ROW WHEN ((OLD.trigger_rule, OLD.flow_timeout, OLD.schedule, OLD.foreach::text,
                        OLD.max_concurrency, OLD.target)
                       IS DISTINCT FROM (NEW.trigger_rule, NEW.flow_timeout, NEW.schedule,
                        NEW.foreach::text, NEW.max_concurrency, NEW.target))
    EXECUTE FUNCTION sisy.jobs_validate_flow();

-- Deleting a job others run after fails with a message naming them (the foreign key alone
-- would name a constraint). Deleting a dependent job removes its edges (ON DELETE CASCADE).
CREATE FUNCTION sisy.jobs_delete_guard() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    downs text;
BEGIN
    SELECT string_agg(quote_literal(job), ', ' ORDER BY job) INTO downs
      FROM sisy.dependencies WHERE upstream = OLD.name;
    IF downs IS NOT NULL THEN
        RAISE EXCEPTION 'job ''%'' cannot be deleted: % run(s) after it; delete those dependencies (or jobs) first',
            OLD.name, downs USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER jobs_delete_guard BEFORE DELETE ON sisy.jobs
    FOR EACH ROW EXECUTE FUNCTION sisy.jobs_delete_guard();

-- The roots a job belongs to: the jobs without upstream reached by walking upstream from it
-- (the job itself when it has none). Edges (skip_job, skip_upstream) are ignored: the edge
-- being replaced by an UPDATE.
CREATE FUNCTION sisy.roots_of(name text, skip_job text, skip_upstream text) RETURNS text[]
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE up (job) AS (
        SELECT name
        UNION
        SELECT d.upstream FROM sisy.dependencies d JOIN up ON d.job = up.job
         WHERE NOT (d.job IS NOT DISTINCT FROM skip_job AND d.upstream IS NOT DISTINCT FROM skip_upstream)
    )
    SELECT coalesce(array_agg(up.job ORDER BY up.job), '{}') FROM up
     WHERE NOT EXISTS (SELECT 1 FROM sisy.dependencies d
                        WHERE d.job = up.job
                          AND NOT (d.job IS NOT DISTINCT FROM skip_job
                                   AND d.upstream IS NOT DISTINCT FROM skip_upstream))
$$;

-- Every edge: a self-edge, an unknown job, an edge onto a scheduled job, a cycle (shown as its
-- path) and an edge that gives a job two roots are refused with what to do. Serialised by
-- one transaction-level advisory lock: the checks below read the committed graph.
CREATE FUNCTION sisy.dependencies_validate() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j sisy.jobs;
    old_job text;
    old_up text;
    cycle text[];
    seen text[];
    frontier text[];
    parent jsonb := '{}';
    step jsonb;
    other text;
    up_roots text[];
    job_roots text[];
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('sisy.dependencies'));
    IF TG_OP = 'UPDATE' THEN
        old_job := OLD.job;
        old_up := OLD.upstream;
    END IF;
    IF NEW.job IS NULL OR NEW.upstream IS NULL THEN
        RAISE EXCEPTION 'sisy.dependencies.%: must not be NULL: name a job', CASE WHEN NEW.job IS NULL THEN 'job' ELSE 'upstream' END
            USING ERRCODE = 'not_null_violation';
    END IF;
    IF NEW.job = NEW.upstream THEN
        RAISE EXCEPTION 'sisy.dependencies: job ''%'' cannot run after itself: remove this edge', NEW.job
            USING ERRCODE = 'check_violation';
    END IF;
    -- Locked: a schedule given to the job meanwhile waits for this edge (and then sees it),
    -- or this edge waits for the schedule (and sees it).
    SELECT * INTO j FROM sisy.jobs WHERE name = NEW.job FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sisy.dependencies.job: no job named ''%'': create the job first', NEW.job
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM sisy.jobs WHERE name = NEW.upstream) THEN
        RAISE EXCEPTION 'sisy.dependencies.upstream: no job named ''%'': create the job first', NEW.upstream
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- A condition is evaluated with no variables: one that names one (`$x`) could never be.
    IF NEW.condition IS NOT NULL THEN
        BEGIN
            PERFORM jsonb_path_match('{}', NEW.condition, '{}', true);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'sisy.dependencies.condition: % cannot be evaluated: %: write a predicate over the upstream''s result, e.g. ''$.rows > 0''',
                quote_literal(NEW.condition::text), SQLERRM USING ERRCODE = 'check_violation';
        END;
    END IF;
    IF j.schedule IS NOT NULL THEN
        RAISE EXCEPTION 'sisy.dependencies: job ''%'' has a schedule (''%''), and a job that runs after another runs when its flow reaches it: set its schedule to NULL first, or schedule the flow''s root',
            NEW.job, j.schedule USING ERRCODE = 'check_violation';
    END IF;
    -- A cycle: the upstream is already reachable downstream of the job. Breadth first, each
    -- job visited once (a walk over paths would take 2^24 steps under a ladder of 24
    -- layers); `parent` remembers how each job was reached, to show the cycle as one path.
    seen := ARRAY[NEW.job];
    frontier := ARRAY[NEW.job];
    WHILE cardinality(frontier) > 0 AND NOT (NEW.upstream = ANY (seen)) LOOP
        SELECT coalesce(array_agg(n.job), '{}'), coalesce(jsonb_object_agg(n.job, n.upstream), '{}')
          INTO frontier, step
          FROM (SELECT DISTINCT ON (d.job) d.job, d.upstream FROM sisy.dependencies d
                 WHERE d.upstream = ANY (frontier) AND d.job <> ALL (seen)
                   AND NOT (d.job IS NOT DISTINCT FROM old_job AND d.upstream IS NOT DISTINCT FROM old_up)
                 ORDER BY d.job, d.upstream) n;
        seen := seen || frontier;
        parent := parent || step;
    END LOOP;
    IF NEW.upstream = ANY (seen) THEN
        cycle := ARRAY[NEW.upstream];
        WHILE cycle[1] <> NEW.job LOOP
            cycle := (parent ->> cycle[1]) || cycle;
        END LOOP;
    END IF;
    IF cycle IS NOT NULL THEN
        RAISE EXCEPTION 'sisy.dependencies: this edge would make a cycle: % -> %: remove one of its edges',
            NEW.upstream, array_to_string(cycle, ' -> ') USING ERRCODE = 'check_violation';
    END IF;
    -- One flow per job: the new upstream must lead to the root the job's other upstreams lead
    -- to. Every edge was validated so, so each job has one root and one other upstream tells
    -- it: one walk up per edge, not one per other upstream (adding the 1,000th upstream of a
    -- join walked up from the 999 others; building the join took minutes).
    SELECT d.upstream INTO other FROM sisy.dependencies d
     WHERE d.job = NEW.job AND d.upstream <> NEW.upstream
       AND NOT (d.job IS NOT DISTINCT FROM old_job AND d.upstream IS NOT DISTINCT FROM old_up)
     ORDER BY d.upstream LIMIT 1;
    IF FOUND THEN
        up_roots := sisy.roots_of(NEW.upstream, old_job, old_up);
        job_roots := sisy.roots_of(other, old_job, old_up);
        IF up_roots IS DISTINCT FROM job_roots THEN
            RAISE EXCEPTION 'sisy.dependencies: job ''%'' would belong to two flows (roots % and %): a job belongs to one flow; give them a common root (a job whose command is true)',
                NEW.job, array_to_string(job_roots, ', '), array_to_string(up_roots, ', ')
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER dependencies_validate BEFORE INSERT OR UPDATE OF job, upstream, condition ON sisy.dependencies
    FOR EACH ROW EXECUTE FUNCTION sisy.dependencies_validate();

-- Removing an edge, or moving it with an UPDATE, can split a flow: R -> a -> c, R -> b -> c
-- without a's edge from R makes a a second root of c. After the change (an AFTER trigger
-- sees it), every job downstream of the edge's job must still have one root.
CREATE FUNCTION sisy.dependencies_one_root() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('sisy.dependencies'));
    WITH RECURSIVE down (job) AS (
        SELECT OLD.job
        UNION
        SELECT d.job FROM sisy.dependencies d JOIN down ON d.upstream = down.job
    )
    SELECT down.job, r.roots INTO bad
      FROM down, LATERAL (SELECT sisy.roots_of(down.job, NULL, NULL) AS roots) r
     WHERE cardinality(r.roots) > 1
     ORDER BY down.job LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'sisy.dependencies: % the edge % -> % would leave job ''%'' in two flows (roots %): a job belongs to one flow; change the edges of ''%'' first, or keep a common root',
            CASE WHEN TG_OP = 'DELETE' THEN 'removing' ELSE 'moving' END, OLD.upstream, OLD.job,
            bad.job, array_to_string(bad.roots, ', '), bad.job USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER dependencies_one_root AFTER DELETE OR UPDATE OF job, upstream ON sisy.dependencies
    FOR EACH ROW EXECUTE FUNCTION sisy.dependencies_one_root();

-- A result as the job wrote it: JSON text the guardian parsed (no NUL in it), stored as jsonb
-- with every digit of its numbers; a number jsonb cannot hold (1e-20000) makes the whole text
-- a JSON string rather than fail the statement that records the run's end.
CREATE FUNCTION sisy.result_jsonb(raw text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN raw::jsonb;
EXCEPTION WHEN OTHERS THEN
    RETURN to_jsonb(rtrim(raw, E'\n\r'));
END $$;

-- 0012: fan-out and fan-in (SPEC §7): a member that runs once per item of a list known only
-- when it is decided, and a fleet-wide cap on a job's running runs.
--
-- * `sisy.jobs.foreach`: a jsonpath over the member's SISY_INPUTS; one run per item, each with
--   `sisy.runs.item` (the item) and `item_index` (0, 1, …). The unique key covers the item,
--   so no item runs twice in one flow run whatever the number of guardians. At most 10,000
--   items; an empty list is one `skipped` row and counts as success.
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
    IF NEW.foreach IS NOT NULL AND NEW.target = 'all' THEN
        RAISE EXCEPTION 'sisy.jobs.foreach: job ''%'' targets all hosts, and its items run on any host of the pool: use target ''any''',
            NEW.name USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.foreach IS NOT NULL THEN
        BEGIN
            PERFORM jsonb_path_query_array('{}', NEW.foreach, '{}', true);
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'sisy.jobs.foreach: % cannot be evaluated: %: write a path over SISY_INPUTS, e.g. ''$.list_files.files[*]''',
                quote_literal(NEW.foreach::text), SQLERRM USING ERRCODE = 'check_violation';
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

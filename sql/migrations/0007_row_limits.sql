-- 0007: no value of one job row can fail a statement that serves a pool (SPEC §8).
-- compatible-with: 6
--
-- Compatible with a sisy built for schema 6: it changes triggers, a view and row limits,
-- not the statements a guardian of that version issues.
--
-- * Intervals are limited to 100 years at INSERT/UPDATE (ttl, jitter, retry_delay,
--   max_runtime, kill_grace): far beyond any real use, and small enough that every sum a
--   guardian or a trigger forms from them (due time + jitter + ttl, now + retry delay + ttl)
--   stays inside the range of timestamptz and of the guardian's clock. Rows from before this
--   limit are clamped to it wherever they are used (here, in the views, in the guardian).
-- * A job's name is limited to 200 characters: it travels in the payload of every run event,
--   and a NOTIFY payload longer than 8000 bytes fails the statement that sent it, which may be
--   the statement inserting or expiring the runs of the whole pool.
-- * A job with no schedule and a `next_due` is a one-off run at next_due (like `at`): the
--   guardian that materialises it clears next_due. Changing its timezone does not forget
--   next_due (an instant needs no zone), nor does resuming it (a one-off missed while
--   suspended is then recorded as missed, not dropped without a trace).
-- * next_due given by a person must be a real time (years 1 to 9999), not 'infinity'.

CREATE OR REPLACE FUNCTION sisy.jobs_validate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    limit_ constant interval := interval '100 years';
BEGIN
    IF NEW.name IS NULL OR btrim(NEW.name) = '' THEN
        RAISE EXCEPTION 'sisy.jobs.name must not be empty' USING ERRCODE = 'check_violation';
    END IF;
    IF length(NEW.name) > 200 THEN
        RAISE EXCEPTION 'sisy.jobs.name must be at most 200 characters, got %', length(NEW.name)
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.target NOT IN ('any', 'all') THEN
        RAISE EXCEPTION 'sisy.jobs.target must be ''any'' or ''all'', got ''%''', NEW.target
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.overlap NOT IN ('forbid', 'allow', 'replace') THEN
        RAISE EXCEPTION 'sisy.jobs.overlap must be ''forbid'', ''allow'' or ''replace'', got ''%''',
            NEW.overlap USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.ttl <= interval '0' THEN
        RAISE EXCEPTION 'sisy.jobs.ttl must be positive, got %', NEW.ttl USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.max_runtime IS NOT NULL AND NEW.max_runtime <= interval '0' THEN
        RAISE EXCEPTION 'sisy.jobs.max_runtime must be positive or NULL, got %', NEW.max_runtime
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.kill_grace < interval '0' THEN
        RAISE EXCEPTION 'sisy.jobs.kill_grace must not be negative, got %', NEW.kill_grace
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.retry_delay < interval '0' THEN
        RAISE EXCEPTION 'sisy.jobs.retry_delay must not be negative, got %', NEW.retry_delay
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.jitter < interval '0' THEN
        RAISE EXCEPTION 'sisy.jobs.jitter must not be negative, got %', NEW.jitter
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.ttl > limit_ THEN
        RAISE EXCEPTION 'sisy.jobs.ttl must be at most 100 years, got %', NEW.ttl
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.max_runtime > limit_ THEN
        RAISE EXCEPTION 'sisy.jobs.max_runtime must be at most 100 years (or NULL for no limit), got %',
            NEW.max_runtime USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.kill_grace > limit_ THEN
        RAISE EXCEPTION 'sisy.jobs.kill_grace must be at most 100 years, got %', NEW.kill_grace
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.retry_delay > limit_ THEN
        RAISE EXCEPTION 'sisy.jobs.retry_delay must be at most 100 years, got %', NEW.retry_delay
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.jitter > limit_ THEN
        RAISE EXCEPTION 'sisy.jobs.jitter must be at most 100 years, got %', NEW.jitter
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.max_retries < 0 THEN
        RAISE EXCEPTION 'sisy.jobs.max_retries must not be negative, got %', NEW.max_retries
            USING ERRCODE = 'check_violation';
    END IF;
    IF jsonb_typeof(NEW.env) <> 'object' THEN
        RAISE EXCEPTION 'sisy.jobs.env must be a JSON object like {"KEY": "value"}, got %', NEW.env
            USING ERRCODE = 'check_violation';
    END IF;
    BEGIN
        PERFORM now() AT TIME ZONE NEW.timezone;
    EXCEPTION WHEN invalid_parameter_value THEN
        RAISE EXCEPTION 'sisy.jobs.timezone: unknown time zone ''%'': use an IANA name such as ''Europe/Amsterdam'' or ''UTC''',
            NEW.timezone USING ERRCODE = 'check_violation';
    END;
    IF NEW.schedule IS NOT NULL AND btrim(NEW.schedule) = '' THEN
        NEW.schedule := NULL;  -- an empty schedule means "only when triggered"
    END IF;
    IF NEW.next_due IS NOT NULL AND NOT (NEW.next_due >= '0001-01-01 00:00:00+00'
                                         AND NEW.next_due < '10000-01-01 00:00:00+00') THEN
        RAISE EXCEPTION 'sisy.jobs.next_due must be a time between the years 1 and 9999 (or NULL), got %',
            NEW.next_due USING ERRCODE = 'check_violation';
    END IF;

    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
        -- A new schedule or zone takes effect from the next occurrence: forget the computed
        -- one so that a guardian computes it again (from now, not from the old schedule).
        -- A one-off (no schedule) keeps its instant: a zone does not move it.
        IF NEW.schedule IS DISTINCT FROM OLD.schedule
           OR (NEW.timezone IS DISTINCT FROM OLD.timezone AND NEW.schedule IS NOT NULL) THEN
            NEW.next_due := NULL;
            NEW.schedule_error := NULL;
        END IF;
        -- Resuming does not replay the suspended period: suspension is deliberate, not a miss.
        -- A one-off keeps its instant: it runs, or is recorded as missed beyond its ttl.
        IF OLD.suspended AND NOT NEW.suspended AND NEW.schedule IS NOT NULL THEN
            NEW.next_due := NULL;
        END IF;
    END IF;
    RETURN NEW;
END $$;

-- As in 0001, with two changes: the retry delay is computed so that no row can make it
-- overflow (the interval columns clamped to the limit above, the doubled delay capped at
-- it), and the event payload carries at most 1000 characters of the job's name. Either
-- failure would fail the statement that changed the run's state: the heartbeat declaring the
-- runs of a dead host lost, the tick expiring the runs of a pool, the scheduler's insert.
CREATE OR REPLACE FUNCTION sisy.runs_state_changed() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j sisy.jobs;
    delay interval;
    limit_ constant interval := interval '100 years';
BEGIN
    PERFORM pg_notify('sisy_events', json_build_object(
        'run_id', NEW.id, 'job', left(NEW.job_name, 1000),
        'old_state', CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE OLD.state END,
        'new_state', NEW.state, 'host', NEW.host)::text);

    IF TG_OP = 'INSERT' THEN
        IF NEW.state = 'pending' THEN
            PERFORM pg_notify('sisy_wakeup', NEW.pool);
        END IF;
        RETURN NULL;
    END IF;

    -- A retry follows a failed, timed-out or lost attempt, and a run killed by its guardian's
    -- shutdown (kill_requested_at is NULL then); never one an operator or `replace` killed.
    IF NOT NEW.no_retry AND NEW.job_id IS NOT NULL AND (
           NEW.state IN ('failed', 'timed_out', 'lost')
        OR (NEW.state = 'killed' AND NEW.kill_requested_at IS NULL)) THEN
        SELECT * INTO j FROM sisy.jobs WHERE id = NEW.job_id;
        IF FOUND AND NEW.attempt <= j.max_retries THEN
            -- Doubling per attempt, at most 2^16 times and at most the limit: no count of
            -- retries and no delay can overflow the interval or the timestamps below.
            delay := least(least(j.retry_delay, limit_) * power(2, least(NEW.attempt - 1, 16))::int,
                           limit_);
            INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt,
                                   target_host, due_at, deadline)
            VALUES (NEW.job_id, NEW.job_name, j.pool, NEW.scheduled_for, 'retry', NEW.attempt + 1,
                    NEW.target_host, now() + delay, now() + delay + least(j.ttl, limit_))
            ON CONFLICT ON CONSTRAINT runs_occurrence_key DO NOTHING;
        END IF;
    END IF;
    RETURN NULL;
END $$;

-- As in 0003, with the ttl of rows from before the limit clamped and an infinite next_due
-- allowed for: `now() - ttl` out of range, or `now() - '-infinity'`, for one row made the
-- whole view fail.
CREATE OR REPLACE VIEW sisy.overdue_jobs AS
SELECT name, pool, schedule, next_due,
       CASE WHEN isfinite(next_due) THEN now() - next_due END AS overdue_by
  FROM sisy.jobs
 WHERE NOT suspended AND schedule_error IS NULL
   AND next_due < now() - least(ttl, interval '100 years');

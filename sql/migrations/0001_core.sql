-- 0001: the core tables of SPEC §2 and the triggers that keep them consistent.
--
-- Design notes (see ARCHITECTURE.md):
-- * `sisy.runs` has one row per attempt; the unique constraint runs_occurrence_key makes a
--   duplicate run impossible whatever the number of guardians.
-- * Run state changes go through triggers: they publish `sisy_events`, and they schedule the
--   retry of a failed, timed-out or lost attempt. Whoever makes the change (a guardian, the
--   rescuer of another guardian, an operator with psql) gets the same behaviour.
-- * Guardians are woken with `NOTIFY sisy_wakeup` when a job changes or a pending run appears.

CREATE TABLE sisy.jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    command         text NOT NULL,
    schedule        text,
    timezone        text NOT NULL DEFAULT 'UTC',
    pool            text NOT NULL DEFAULT 'default',
    target          text NOT NULL DEFAULT 'any',
    ttl             interval NOT NULL DEFAULT '5 minutes',
    max_runtime     interval,
    kill_grace      interval NOT NULL DEFAULT '10 seconds',
    max_retries     int NOT NULL DEFAULT 0,
    retry_delay     interval NOT NULL DEFAULT '30 seconds',
    overlap         text NOT NULL DEFAULT 'forbid',
    jitter          interval NOT NULL DEFAULT '0',
    run_as          text,
    env             jsonb NOT NULL DEFAULT '{}',
    workdir         text,
    suspended       boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Maintained by the guardians.
    next_due        timestamptz,
    schedule_error  text
);

-- The scheduler finds due jobs through this index: its cost follows what is due, not the
-- number of jobs.
CREATE INDEX jobs_next_due ON sisy.jobs (next_due) WHERE NOT suspended AND schedule_error IS NULL;
-- Jobs whose next occurrence no guardian has computed yet (new or rescheduled).
CREATE INDEX jobs_unseen ON sisy.jobs (id)
    WHERE next_due IS NULL AND schedule IS NOT NULL AND schedule_error IS NULL;

CREATE TABLE sisy.runs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id            bigint REFERENCES sisy.jobs (id) ON DELETE SET NULL,
    job_name          text NOT NULL,
    pool              text NOT NULL,
    scheduled_for     timestamptz NOT NULL,
    reason            text NOT NULL CHECK (reason IN ('schedule', 'manual', 'retry')),
    attempt           int NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    target_host       text,
    due_at            timestamptz NOT NULL,
    deadline          timestamptz NOT NULL,
    state             text NOT NULL DEFAULT 'pending' CHECK (state IN (
                          'pending', 'running', 'succeeded', 'failed', 'timed_out',
                          'killed', 'lost', 'expired', 'skipped', 'cancelled')),
    host              text,
    pid               int,
    claimed_at        timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    heartbeat_at      timestamptz,
    exit_code         int,
    signal            int,
    output            text,
    output_bytes      bigint,
    error             text,
    kill_requested_at timestamptz,
    -- Set when retrying cannot help (e.g. a run_as user this host does not allow).
    no_retry          boolean NOT NULL DEFAULT false,
    -- For a coalesced `expired` row: how many occurrences it stands for.
    missed_count      bigint NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- The rule that makes a duplicate run impossible. NULLS NOT DISTINCT: an `any` job has
-- target_host NULL and must still collide with itself.
ALTER TABLE sisy.runs ADD CONSTRAINT runs_occurrence_key
    UNIQUE NULLS NOT DISTINCT (job_name, scheduled_for, target_host, attempt);

-- The claim reads pending runs in due order; the partial index stays small.
CREATE INDEX runs_pending ON sisy.runs (pool, due_at) WHERE state = 'pending';
-- Heartbeats, the rescuer and overlap checks read running runs.
CREATE INDEX runs_running ON sisy.runs (job_id) WHERE state = 'running';
-- History per job (job_status, CLI listings).
CREATE INDEX runs_job ON sisy.runs (job_id, id DESC);
-- Housekeeping deletes old finished runs in batches.
CREATE INDEX runs_finished ON sisy.runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE sisy.hosts (
    name        text PRIMARY KEY,
    pools       text[] NOT NULL DEFAULT '{default}',
    version     text NOT NULL DEFAULT '',
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL DEFAULT now(),
    capacity    int NOT NULL DEFAULT 0,
    running     int NOT NULL DEFAULT 0,
    draining    boolean NOT NULL DEFAULT false
);

-- Validation of job rows. Everything SQL can check is refused at INSERT/UPDATE time with a
-- message naming the column; the schedule itself is checked by the guardians (cron syntax
-- lives in Rust) and flagged in `schedule_error`.
CREATE FUNCTION sisy.jobs_validate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name IS NULL OR btrim(NEW.name) = '' THEN
        RAISE EXCEPTION 'sisy.jobs.name must not be empty' USING ERRCODE = 'check_violation';
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

    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
        -- A new schedule or zone takes effect from the next occurrence: forget the computed
        -- one so that a guardian computes it again (from now, not from the old schedule).
        IF NEW.schedule IS DISTINCT FROM OLD.schedule OR NEW.timezone IS DISTINCT FROM OLD.timezone THEN
            NEW.next_due := NULL;
            NEW.schedule_error := NULL;
        END IF;
        -- Resuming does not replay the suspended period: suspension is deliberate, not a miss.
        IF OLD.suspended AND NOT NEW.suspended THEN
            NEW.next_due := NULL;
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_validate_insert BEFORE INSERT ON sisy.jobs
    FOR EACH ROW EXECUTE FUNCTION sisy.jobs_validate();
-- Only a change by a person is validated and bumps updated_at; the guardians' own writes
-- (next_due, schedule_error) pass untouched.
CREATE TRIGGER jobs_validate_update BEFORE UPDATE ON sisy.jobs
    FOR EACH ROW WHEN ((OLD.name, OLD.command, OLD.schedule, OLD.timezone, OLD.pool, OLD.target,
                        OLD.ttl, OLD.max_runtime, OLD.kill_grace, OLD.max_retries, OLD.retry_delay,
                        OLD.overlap, OLD.jitter, OLD.run_as, OLD.env, OLD.workdir, OLD.suspended)
           IS DISTINCT FROM (NEW.name, NEW.command, NEW.schedule, NEW.timezone, NEW.pool, NEW.target,
                        NEW.ttl, NEW.max_runtime, NEW.kill_grace, NEW.max_retries, NEW.retry_delay,
                        NEW.overlap, NEW.jitter, NEW.run_as, NEW.env, NEW.workdir, NEW.suspended))
    EXECUTE FUNCTION sisy.jobs_validate();

-- Wake the guardians of the job's pool when a job appears or changes what it needs.
CREATE FUNCTION sisy.jobs_wakeup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.next_due IS NULL OR NEW.suspended IS DISTINCT FROM OLD.suspended
       OR NEW.pool IS DISTINCT FROM OLD.pool THEN
        PERFORM pg_notify('sisy_wakeup', NEW.pool);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_wakeup AFTER INSERT OR UPDATE ON sisy.jobs
    FOR EACH ROW EXECUTE FUNCTION sisy.jobs_wakeup();

-- Pending runs of a deleted job will never run: cancel them (before the foreign key sets
-- their job_id to NULL, so that they can still be found).
CREATE FUNCTION sisy.jobs_cancel_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sisy.runs SET state = 'cancelled', finished_at = now(), error = 'job deleted before the run started'
     WHERE job_id = OLD.id AND state = 'pending';
    RETURN OLD;
END $$;

CREATE TRIGGER jobs_cancel_pending BEFORE DELETE ON sisy.jobs
    FOR EACH ROW EXECUTE FUNCTION sisy.jobs_cancel_pending();

-- Every run state change: publish it, and schedule a retry where the job allows one.
CREATE FUNCTION sisy.runs_state_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    j sisy.jobs;
    delay interval;
BEGIN
    PERFORM pg_notify('sisy_events', json_build_object(
        'run_id', NEW.id, 'job', NEW.job_name,
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
            -- Doubling per attempt; the exponent is capped so that no count of retries
            -- can overflow the interval and make the finishing UPDATE fail.
            delay := j.retry_delay * power(2, least(NEW.attempt - 1, 16))::int;
            INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, attempt,
                                   target_host, due_at, deadline)
            VALUES (NEW.job_id, NEW.job_name, j.pool, NEW.scheduled_for, 'retry', NEW.attempt + 1,
                    NEW.target_host, now() + delay, now() + delay + j.ttl)
            ON CONFLICT ON CONSTRAINT runs_occurrence_key DO NOTHING;
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER runs_inserted AFTER INSERT ON sisy.runs
    FOR EACH ROW EXECUTE FUNCTION sisy.runs_state_changed();
CREATE TRIGGER runs_state_changed AFTER UPDATE OF state ON sisy.runs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION sisy.runs_state_changed();

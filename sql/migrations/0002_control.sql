-- 0002: the control functions of SPEC §2. The CLI calls these; any SQL client can too.
-- Each raises an error naming the job, run or host that does not exist.

-- A run now. For a `target = 'all'` job, one run per live host of its pool; the id returned
-- is the first of them.
CREATE FUNCTION sisy.trigger(job_name text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    j sisy.jobs;
    at timestamptz := clock_timestamp();
    first_id bigint;
BEGIN
    SELECT * INTO j FROM sisy.jobs WHERE name = trigger.job_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no job named ''%''', trigger.job_name USING ERRCODE = 'no_data_found';
    END IF;
    IF j.target = 'all' THEN
        INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, target_host, due_at, deadline)
        SELECT j.id, j.name, j.pool, at, 'manual', h.name, at, at + j.ttl
          FROM sisy.hosts h
         WHERE j.pool = ANY (h.pools) AND h.lease_until > now() AND NOT h.draining
         ORDER BY h.name;
        SELECT min(id) INTO first_id FROM sisy.runs
         WHERE runs.job_name = j.name AND scheduled_for = at AND reason = 'manual';
        IF first_id IS NULL THEN
            RAISE EXCEPTION 'job ''%'' targets all hosts of pool ''%'', and no live host serves that pool',
                j.name, j.pool USING ERRCODE = 'no_data_found';
        END IF;
        RETURN first_id;
    END IF;
    INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, due_at, deadline)
    VALUES (j.id, j.name, j.pool, at, 'manual', at, at + j.ttl)
    RETURNING id INTO first_id;
    RETURN first_id;
END $$;

-- Pending: cancelled at once. Running: its guardian is told through NOTIFY sisy_kill and
-- sends SIGTERM to the process group, SIGKILL after kill_grace.
CREATE FUNCTION sisy.kill(run_id bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r sisy.runs;
BEGIN
    SELECT * INTO r FROM sisy.runs WHERE id = kill.run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no run with id %', kill.run_id USING ERRCODE = 'no_data_found';
    END IF;
    IF r.state = 'pending' THEN
        UPDATE sisy.runs SET state = 'cancelled', finished_at = now(), kill_requested_at = now(),
                             error = 'cancelled by sisy.kill before it started'
         WHERE id = r.id;
    ELSIF r.state = 'running' THEN
        UPDATE sisy.runs SET kill_requested_at = coalesce(kill_requested_at, now()),
                             error = coalesce(error, 'killed by sisy.kill')
         WHERE id = r.id;
        PERFORM pg_notify('sisy_kill', r.id::text);
    ELSE
        RAISE EXCEPTION 'run % already finished (state %): nothing to kill', r.id, r.state
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END $$;

-- A new pending attempt of a finished run (same occurrence, next attempt number).
CREATE FUNCTION sisy.retry(run_id bigint) RETURNS bigint LANGUAGE plpgsql AS $$
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

CREATE FUNCTION sisy.set_suspended(job_name text, value boolean) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sisy.jobs SET suspended = value WHERE name = set_suspended.job_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no job named ''%''', set_suspended.job_name USING ERRCODE = 'no_data_found';
    END IF;
END $$;

CREATE FUNCTION sisy.suspend(job_name text) RETURNS void LANGUAGE sql
    BEGIN ATOMIC SELECT sisy.set_suspended(job_name, true); END;
CREATE FUNCTION sisy.resume(job_name text) RETURNS void LANGUAGE sql
    BEGIN ATOMIC SELECT sisy.set_suspended(job_name, false); END;

CREATE FUNCTION sisy.set_draining(host text, value boolean) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sisy.hosts SET draining = value WHERE name = set_draining.host;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no host named ''%''', set_draining.host USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM pg_notify('sisy_hosts', set_draining.host);
END $$;

CREATE FUNCTION sisy.drain(host text) RETURNS void LANGUAGE sql
    BEGIN ATOMIC SELECT sisy.set_draining(host, true); END;
CREATE FUNCTION sisy.undrain(host text) RETURNS void LANGUAGE sql
    BEGIN ATOMIC SELECT sisy.set_draining(host, false); END;

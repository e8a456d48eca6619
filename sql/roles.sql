-- The three roles of sisyphus and their rights. Run by `sisy db roles` (which needs
-- CREATEROLE) and again by every `sisy db migrate` while the roles exist, so that new
-- objects get their grants. Idempotent. Log-in roles are made members of these, e.g.
--   CREATE ROLE alice LOGIN PASSWORD '…' IN ROLE sisy_admin;
--   CREATE ROLE guardian_web01 LOGIN PASSWORD '…' IN ROLE sisy_guardian;
--
-- sisy_admin    manages jobs (all columns), calls the control functions, reads everything.
-- sisy_guardian claims and records runs, heartbeats hosts, maintains next_due and
--               schedule_error; it reads jobs but cannot change a job's command, run_as,
--               env, pool or anything else a person decides.
-- sisy_reader   reads results, hosts and the views; cannot write anything, cannot read a
--               job's env (where secrets live).

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['sisy_admin', 'sisy_guardian', 'sisy_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by another host: fine
            END;
        END IF;
    END LOOP;
END $$;

GRANT USAGE ON SCHEMA sisy TO sisy_admin, sisy_guardian, sisy_reader;
GRANT SELECT ON sisy.migrations TO sisy_admin, sisy_guardian, sisy_reader;

-- Readers: results, hosts, views; jobs without env.
GRANT SELECT ON sisy.runs, sisy.hosts, sisy.leases TO sisy_reader;
GRANT SELECT (id, name, command, schedule, timezone, pool, target, ttl, max_runtime, kill_grace,
              max_retries, retry_delay, overlap, jitter, run_as, workdir, suspended,
              created_at, updated_at, next_due, schedule_error, source,
              trigger_rule, continue_on_failure, flow_timeout, foreach, max_concurrency)
   ON sisy.jobs TO sisy_reader;
-- Flows: the graph, the flow runs and their snapshots, for everyone who reads.
GRANT SELECT ON sisy.dependencies, sisy.flow_runs, sisy.flow_run_members, sisy.flow_run_edges,
                sisy.flow_status, sisy.flow_members
   TO sisy_reader, sisy_admin, sisy_guardian;
GRANT SELECT ON sisy.job_status, sisy.recent_failures, sisy.missed_runs, sisy.overdue_jobs,
                sisy.host_status, sisy.dead_hosts, sisy.running_runs
   TO sisy_reader, sisy_admin, sisy_guardian;
-- The names of a job's env variables, never their values (readers too).
GRANT SELECT ON sisy.job_env_keys TO sisy_reader, sisy_admin, sisy_guardian;

-- Admins: jobs entirely, results read-only, control through the functions.
GRANT SELECT, INSERT, UPDATE, DELETE ON sisy.jobs, sisy.dependencies TO sisy_admin;
GRANT EXECUTE ON FUNCTION sisy.cancel_flow(bigint), sisy.rerun_flow(bigint, text) TO sisy_admin;
GRANT SELECT ON sisy.runs, sisy.hosts, sisy.leases TO sisy_admin;
GRANT EXECUTE ON FUNCTION sisy.trigger(text), sisy.kill(bigint), sisy.retry(bigint),
    sisy.set_suspended(text, boolean), sisy.suspend(text), sisy.resume(text),
    sisy.set_draining(text, boolean), sisy.drain(text), sisy.undrain(text) TO sisy_admin;

-- Guardians: read jobs (they need command, env, run_as to run them), write only the two
-- columns they maintain (column-level UPDATE is also what row locks on jobs require);
-- runs and hosts are theirs.
GRANT SELECT ON sisy.jobs TO sisy_guardian;
GRANT UPDATE (next_due, schedule_error) ON sisy.jobs TO sisy_guardian;
GRANT SELECT, INSERT, UPDATE, DELETE ON sisy.runs, sisy.hosts TO sisy_guardian;
-- The rescue lease (heartbeat.sql): taken and renewed by the heartbeat.
GRANT SELECT, INSERT, UPDATE ON sisy.leases TO sisy_guardian;
-- The flows' safety net (timeouts, re-decisions) and its due time, from the tick.
GRANT EXECUTE ON FUNCTION sisy.flows_tend(interval, int), sisy.flows_due_in(interval) TO sisy_guardian;
-- The tick and the heartbeat (runs_tick.sql, heartbeat.sql), with the guardian's own rights.
GRANT EXECUTE ON FUNCTION sisy.guardian_tick(text[], text, text[]),
    sisy.guardian_beat(text, float8, int, bigint[], int[], text[], boolean, timestamptz, boolean)
    TO sisy_guardian;
-- Housekeeping deletes old finished flow runs (their snapshots go with them).
GRANT DELETE ON sisy.flow_runs TO sisy_guardian;

-- 0016: the guardian's two statements of every interval keep their plans through a pooler.
-- compatible-with: 12
--
-- Compatible with a sisy built for schema 12: it only adds two functions. Such a guardian
-- sends the statements itself and acts for every pool, as it always did.
--
-- Through a transaction pooler (`prepared_statements = false`) every statement is sent
-- unnamed and so parsed and planned at every execution. The tick (every `poll_interval` on
-- every guardian without LISTEN) took 4 ms to plan and about 1 ms to run; a thousand
-- guardians polling once a second spent more than two cores planning it. In PL/pgSQL the
-- statement is planned once per server session and its plan kept, and PgBouncer's server
-- sessions live long: the guardian now sends `SELECT * FROM sisy.guardian_tick(...)` (and
-- `sisy.guardian_beat(...)` for the heartbeat), a statement that costs nothing to plan.
-- The statements are the ones sql/queries/runs_tick.sql and heartbeat.sql held up to
-- schema 15 ($n are the functions' arguments), with one addition: the tick of a guardian
-- that acts for no pool and does not tend (most of a large fleet) runs a lean statement of
-- what is its own only. Generic plans always (`plan_cache_mode`): with custom plans the
-- tick was planned again at every call, and its plan for the values at hand read 143
-- buffers where the generic one reads 19. A change to them is a new migration from now on.
-- Invoker's rights: the guardian's own.

CREATE FUNCTION sisy.guardian_tick(text[], text, text[])
    RETURNS TABLE (expired bigint, unseen boolean, job_due_in float8, run_due_in float8,
                   wake_in float8, acting text[], tend boolean, flow_due_in float8,
                   kill_requested bigint[])
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan
    AS $fn$
#variable_conflict use_column
DECLARE
    -- The pools this guardian acts for: those whose lease it holds, and those whose lease
    -- nobody holds now (a holder that died, a pool in the middle of a hand-over). Held
    -- means: by a live host that serves the pool and does not drain (a row written by hand
    -- for another host, or a holder reconfigured away from the pool, holds nothing).
    v_acting text[] := ARRAY(
        SELECT p.pool FROM unnest($1::text[]) AS p (pool)
         WHERE 'pool:' || p.pool = ANY ($3)
            OR NOT EXISTS (SELECT 1 FROM sisy.leases l JOIN sisy.hosts h ON h.name = l.holder
                            WHERE l.name = 'pool:' || p.pool AND l.until >= now()
                              AND h.lease_until >= now() AND p.pool = ANY (h.pools)
                              AND NOT h.draining));
    -- Likewise for the flows' safety net.
    v_tend boolean := 'tend' = ANY ($3)
        OR NOT EXISTS (SELECT 1 FROM sisy.leases l JOIN sisy.hosts h ON h.name = l.holder
                        WHERE l.name = 'tend' AND l.until >= now() AND h.lease_until >= now());
BEGIN
    IF cardinality(v_acting) = 0 AND NOT v_tend THEN
        -- Most guardians of a large fleet, most of the time: what is theirs only. When the
        -- next `all` occurrence of their pools falls due, whether a run is due now (they
        -- claim it), when their own next run does, and their runs' kill requests. No
        -- expiry, seeding or flows: the guardians acting for the pools do those. A third of
        -- the full statement's work, which a poll of every guardian pays.
        RETURN QUERY
        WITH capped AS MATERIALIZED (
            SELECT x.job_id FROM sisy.runs x JOIN sisy.jobs j ON j.id = x.job_id
             WHERE x.state = 'running' AND j.max_concurrency IS NOT NULL
             GROUP BY x.job_id, j.max_concurrency HAVING count(*) >= j.max_concurrency
        ), next_job AS (
            SELECT min(first.next_due) AS at
              FROM unnest($1::text[]) AS p (pool)
             CROSS JOIN LATERAL (
                SELECT next_due FROM sisy.jobs
                 WHERE pool = p.pool AND target = 'all' AND next_due IS NOT NULL
                   AND NOT suspended AND schedule_error IS NULL
                 ORDER BY next_due
                 LIMIT 1
             ) first
        ), next_run AS (
            SELECT min(first.due_at) AS at
              FROM unnest($1::text[]) AS p (pool)
             CROSS JOIN LATERAL (
                SELECT due_at FROM sisy.runs c
                 WHERE state = 'pending' AND pool = p.pool AND deadline > now()
                   AND (target_host IS NULL OR target_host = $2)
                   AND (c.job_id IS NULL OR c.job_id NOT IN (SELECT job_id FROM capped))
                 ORDER BY due_at
                 LIMIT 1
             ) first
        ), next_wake AS (
            SELECT min(due_at) AS at FROM (
                SELECT due_at FROM sisy.runs c
                 WHERE state = 'pending' AND target_host = $2 AND pool = ANY ($1)
                   AND deadline > now()
                   AND (c.job_id IS NULL OR c.job_id NOT IN (SELECT job_id FROM capped))
                 ORDER BY due_at
                 LIMIT 1) mine
        )
        SELECT 0::bigint, false,
               (SELECT CASE WHEN at IS NULL THEN NULL WHEN isfinite(at) THEN extract(epoch FROM at - now())
                            WHEN at < now() THEN -1 ELSE 1e9 END FROM next_job)::float8,
               (SELECT CASE WHEN at IS NULL THEN NULL WHEN isfinite(at) THEN extract(epoch FROM at - now())
                            WHEN at < now() THEN -1 ELSE 1e9 END FROM next_run)::float8,
               (SELECT CASE WHEN at IS NULL THEN NULL WHEN isfinite(at) THEN extract(epoch FROM at - now())
                            WHEN at < now() THEN -1 ELSE 1e9 END FROM next_wake)::float8,
               '{}'::text[], false, NULL::float8,
               (SELECT coalesce(array_agg(id), '{}') FROM sisy.runs
                 WHERE state = 'running' AND host = $2 AND kill_requested_at IS NOT NULL);
        RETURN;
    END IF;
    RETURN QUERY
    -- The dispatcher's look at the world, one statement: expire pending runs of these pools whose
    -- deadline passed, then say what there is to do and when the next thing falls due, and which
    -- runs held here have a kill request.
    --   $1 pools  $2 host  $3 the leases this guardian holds (from its last heartbeat)
    --
    -- No herd: what any guardian of a pool could do, one does. The guardian that acts for a pool
    -- (`acting`: it holds the lease `pool:<name>`, or nobody holds it now: a holder that died,
    -- a pool in the middle of a hand-over) materialises its jobs (`job_due_in`) and sleeps until
    -- its next due run (`wake_in`); the others only wake for their own `target = 'all'`
    -- occurrences and runs (`target_host`), and claim what `run_due_in` says is due now when
    -- they look anyway (a run of theirs ended, the poll). `tend`: likewise for the flows' safety
    -- net. So the work per run does not grow with the guardians of its pool.
    -- Its cost follows what is due, not the size of the tables: the expiry reads only pending
    -- runs already due (a deadline is due_at + ttl and ttl is positive, so a run whose deadline
    -- passed is due); the next run and the next job are the first of each pool in
    -- runs_pending_due and jobs_pool_next_due (LATERAL, as in runs_claim.sql: overdue jobs and
    -- runs of pools this guardian does not serve are never read). `flow_due_in` is when the flows'
    -- safety net has something to do (a flow run's deadline, a recheck): two index lookups.
    --
    -- Waiting for max_concurrency never makes a run expire: an overdue pending run of a capped
    -- job whose slots are all taken (as many running runs as the cap), or were until a run of it
    -- ended less than a ttl ago, gets its deadline moved to now() + ttl instead (`held`): its ttl
    -- counts again from the last moment the cap held it back. Only a run that saw a free slot
    -- for a whole ttl without a guardian taking it expires, as any other run does. Checked once
    -- per job with overdue runs, through runs_running (a few rows) and runs_job.
    WITH acting AS (
        SELECT unnest(v_acting) AS pool
    ), overdue AS MATERIALIZED (
        -- Read once (the expiry and `held` below share it): normally no row.
        SELECT id, job_id FROM sisy.runs
         WHERE state = 'pending' AND due_at <= now() AND deadline <= now() AND pool = ANY ($1)
    ), held AS (
        SELECT j.id, least(j.ttl, interval '100 years') AS ttl
          FROM sisy.jobs j
         WHERE j.id IN (SELECT job_id FROM overdue) AND j.max_concurrency IS NOT NULL
           AND (j.max_concurrency <= (SELECT count(*) FROM sisy.runs x
                                       WHERE x.job_id = j.id AND x.state = 'running')
                OR EXISTS (SELECT 1 FROM sisy.runs x
                            WHERE x.job_id = j.id AND x.started_at IS NOT NULL
                              AND x.finished_at > now() - j.ttl))
    ), kept AS (
        -- The row is re-checked under its lock (claimed meanwhile: left alone), as below.
        UPDATE sisy.runs r SET deadline = now() + held.ttl
          FROM overdue o JOIN held ON held.id = o.job_id
         WHERE r.id = o.id AND r.state = 'pending' AND r.deadline <= now()
    ), expired AS (
        UPDATE sisy.runs r
           SET state = 'expired', finished_at = now(),
               error = format('not started before its deadline %s (no free guardian of pool %s in time)',
                              r.deadline, r.pool)
          FROM overdue o
         WHERE r.id = o.id AND r.state = 'pending' AND r.deadline <= now()
           AND (o.job_id IS NULL OR o.job_id NOT IN (SELECT id FROM held))
     RETURNING r.id
    ), next_job AS (
        -- Every job of the pools acted for; elsewhere, `all` jobs only (their occurrence has a
        -- run for this host: jobs_pool_all_next_due).
        SELECT min(first.next_due) AS at
          FROM unnest($1::text[]) AS p (pool)
         CROSS JOIN LATERAL (
            (SELECT next_due FROM sisy.jobs
              WHERE pool = p.pool AND next_due IS NOT NULL AND NOT suspended AND schedule_error IS NULL
                AND p.pool IN (SELECT pool FROM acting)
              ORDER BY next_due
              LIMIT 1)
            UNION ALL
            (SELECT next_due FROM sisy.jobs
              WHERE pool = p.pool AND target = 'all' AND next_due IS NOT NULL AND NOT suspended
                AND schedule_error IS NULL
              ORDER BY next_due
              LIMIT 1)
         ) first
    ), capped AS MATERIALIZED (
        -- As in runs_claim.sql: a run held back by max_concurrency is no reason to look again
        -- before a run of its job ends (which wakes the guardians).
        SELECT x.job_id FROM sisy.runs x JOIN sisy.jobs j ON j.id = x.job_id
         WHERE x.state = 'running' AND j.max_concurrency IS NOT NULL
         GROUP BY x.job_id, j.max_concurrency HAVING count(*) >= j.max_concurrency
    ), next_run AS MATERIALIZED (
        -- The first run this guardian could claim, pool by pool.
        SELECT p.pool, first.due_at
          FROM unnest($1::text[]) AS p (pool)
         CROSS JOIN LATERAL (
            SELECT due_at FROM sisy.runs c
             WHERE state = 'pending' AND pool = p.pool AND deadline > now()
               AND (target_host IS NULL OR target_host = $2)
               AND (c.job_id IS NULL OR c.job_id NOT IN (SELECT job_id FROM capped))
             ORDER BY due_at
             LIMIT 1
         ) first
    ), next_wake AS (
        -- What this guardian sleeps until: the pools it acts for, and its own runs anywhere
        -- (runs_pending_target).
        SELECT due_at FROM next_run WHERE pool IN (SELECT pool FROM acting)
        UNION ALL
        (SELECT due_at FROM sisy.runs c
          WHERE state = 'pending' AND target_host = $2 AND pool = ANY ($1) AND deadline > now()
            AND (c.job_id IS NULL OR c.job_id NOT IN (SELECT job_id FROM capped))
          ORDER BY due_at
          LIMIT 1)
    )
    SELECT (SELECT count(*) FROM expired) AS expired,
           -- The first unseen job in id order, not EXISTS: ordered, the index jobs_unseen is the
           -- one cheap plan whatever the statistics say. EXISTS let the planner pick a scan of
           -- the whole table when the statistics still counted the jobs unseen (right after
           -- 100,000 were imported and seeded: 28 ms a tick until the next ANALYZE).
           (SELECT id FROM sisy.jobs
             WHERE next_due IS NULL AND schedule IS NOT NULL AND schedule_error IS NULL
             ORDER BY id LIMIT 1) IS NOT NULL AS unseen,
           -- An infinite next_due (a row's value, not the guardians') cannot be subtracted
           -- from: it is due at once (and flagged by the scheduler) or never.
           (SELECT CASE WHEN at IS NULL THEN NULL WHEN isfinite(at) THEN extract(epoch FROM at - now())
                        WHEN at < now() THEN -1 ELSE 1e9 END FROM next_job)::float8 AS job_due_in,
           (SELECT CASE WHEN at IS NULL THEN NULL WHEN isfinite(at) THEN extract(epoch FROM at - now())
                        WHEN at < now() THEN -1 ELSE 1e9 END
              FROM (SELECT min(due_at) AS at FROM next_run) n)::float8 AS run_due_in,
           (SELECT CASE WHEN at IS NULL THEN NULL WHEN isfinite(at) THEN extract(epoch FROM at - now())
                        WHEN at < now() THEN -1 ELSE 1e9 END
              FROM (SELECT min(due_at) AS at FROM next_wake) n)::float8 AS wake_in,
           (SELECT coalesce(array_agg(pool), '{}') FROM acting) AS acting,
           v_tend AS tend,
           sisy.flows_due_in() AS flow_due_in,
           -- The runs running here with a kill request (index runs_kill_requested: normally no
           -- row). Without LISTEN, this is how a kill reaches the process within a poll.
           (SELECT coalesce(array_agg(id), '{}') FROM sisy.runs
             WHERE state = 'running' AND host = $2 AND kill_requested_at IS NOT NULL) AS kill_requested;
END $fn$;
REVOKE EXECUTE ON FUNCTION sisy.guardian_tick(text[], text, text[]) FROM PUBLIC;

CREATE FUNCTION sisy.guardian_beat(text, float8, int, bigint[], int[], text[], boolean,
                                   timestamptz, boolean)
    RETURNS TABLE (draining boolean, holder timestamptz, alive bigint[],
                   kill_requested bigint[], lost bigint, unknown bigint, leases text[])
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan
    AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    -- One statement per tick renews this host's lease and the heartbeat of the runs it holds,
    -- gives up runs the database says are running here that this guardian no longer knows, and
    -- (when $7 and this guardian holds the `rescue` lease) declares the running runs of hosts
    -- whose lease has passed `lost`. See heartbeat.rs for when a guardian may judge other hosts.
    --   $1 host  $2 lease seconds  $3 capacity  $4 run ids held here  $5 their pids  $6 pools
    --   $7 rescue others  $8 this process's incarnation (hosts.started_at from its registration)
    --   $9 lead (false once the guardian stops: it gives up `tend` and its pools' leases)
    -- Returns the runs still running here (an id missing from it was taken away: fencing),
    -- those with a kill request, whether the host is draining, the counts of runs declared lost,
    -- and the leases this guardian holds after the beat (`leases`).
    -- The lease is renewed only for this process's incarnation: after a pause that let the lease
    -- lapse, another process may have registered the name; `holder` (the row's incarnation, NULL
    -- when the row is gone) then tells the guardian it no longer owns the name.
    --
    -- Its cost follows this host, not the fleet: its own runs are read through runs_running_host
    -- (and their ids); other hosts are judged by one guardian only, the holder of the lease
    -- `rescue` in sisy.leases, which finds the dead hosts in sisy.hosts and their runs
    -- through runs_running_host. The lease is taken when nobody holds it or it has passed (a
    -- holder that died, a bad row: NULL holder or until); an `until` further away than this
    -- guardian's own lease (a holder with a longer lease, a damaged row) counts only while its
    -- holder's host lease runs. A guardian that sees it held by another takes no lock on it. A
    -- holder renews it with each beat to now() + its lease, so it passes at the latest together
    -- with the holder's host lease, and the next guardian to beat after that takes it over and
    -- rescues in the same beat. Dead hosts are found by reading sisy.hosts (one row per host):
    -- an index on lease_until would make every host's renewal update an index (no HOT update),
    -- a cost paid by every guardian each beat to spare the one rescuer a read of a small table.
    --
    -- The same rule takes and renews the other leases, so that one guardian, not the fleet, does
    -- what any of them could: `pool:<name>` for each pool served (its holder materialises the
    -- pool's scheduled occurrences, sleeps until the pool's next due run and is the one a new
    -- run of the pool wakes: runs_tick.sql), `tend` (the flows' safety net). A draining guardian
    -- gives its pools' leases up in the same beat. Each is a primary-key probe per beat.
    WITH me AS (
        UPDATE sisy.hosts
           SET last_seen = now(), lease_until = now() + make_interval(secs => $2),
               capacity = $3, running = cardinality($4::bigint[]), pools = $6
         WHERE name = $1 AND started_at = $8
     RETURNING draining, started_at
    ), mine AS (
        UPDATE sisy.runs
           SET heartbeat_at = now(), pid = coalesce(p.pid, runs.pid)
          FROM unnest($4::bigint[], $5::int[]) AS p (id, pid)
         WHERE runs.id = p.id AND runs.state = 'running' AND runs.host = $1
     RETURNING runs.id, runs.kill_requested_at IS NOT NULL AS kill_requested
    ), unknown AS (
        -- Not held here for a whole lease: its end never reached the database (a failover that
        -- lost the last commits, a result given up at shutdown). Nothing of it runs here.
        UPDATE sisy.runs
           SET state = 'lost', finished_at = now(),
               error = format('the guardian on %s no longer knew this run: its end never reached the database', $1::text)
         WHERE runs.host = $1 AND runs.state = 'running' AND runs.id <> ALL ($4::bigint[])
           AND runs.heartbeat_at < now() - make_interval(secs => $2)
           -- Only the process that holds the name judges the runs of the name.
           AND EXISTS (SELECT 1 FROM me)
     RETURNING runs.id
    ), wanted AS (
        -- The leases this guardian asks for: `rescue` when it may judge others ($7); one per
        -- pool it serves (`pool:<name>`: materialising the pool's jobs and being woken for its
        -- new runs, see runs_tick.sql) unless it drains; `tend` (the flows' safety net). None
        -- of the last two once it stops ($9).
        SELECT w.name
          FROM me,
               unnest(CASE WHEN $7 THEN ARRAY['rescue'] ELSE '{}'::text[] END
                      || CASE WHEN me.draining OR NOT $9 THEN '{}'::text[]
                              ELSE array(SELECT 'pool:' || p FROM unnest($6::text[]) AS p) END
                      || CASE WHEN $9 THEN ARRAY['tend'] ELSE '{}'::text[] END) AS w (name)
    ), released AS (
        -- Given up at once, not left to pass: a draining guardian claims nothing and a stopping
        -- one does nothing new, so neither must be the one the pools' new runs wake.
        UPDATE sisy.leases SET until = now()
         WHERE holder = $1 AND until > now() AND EXISTS (SELECT 1 FROM me)
           AND (name = 'tend' AND NOT $9
                OR name LIKE 'pool:%' AND (NOT $9 OR (SELECT draining FROM me)))
    ), held AS (
        INSERT INTO sisy.leases AS l (name, holder, until)
        SELECT w.name, $1, now() + make_interval(secs => $2)
          FROM wanted w
         WHERE NOT EXISTS (SELECT 1 FROM sisy.leases c
                            WHERE c.name = w.name AND c.holder <> $1 AND c.until >= now()
                              AND (c.until <= now() + make_interval(secs => $2)
                                   OR EXISTS (SELECT 1 FROM sisy.hosts h
                                               WHERE h.name = c.holder AND h.lease_until >= now()))
                              -- A pool's lease counts only for a host that serves the pool and
                              -- does not drain (as runs_tick.sql judges it).
                              AND (c.name NOT LIKE 'pool:%'
                                   OR EXISTS (SELECT 1 FROM sisy.hosts h
                                               WHERE h.name = c.holder AND NOT h.draining
                                                 AND substr(c.name, 6) = ANY (h.pools))))
        -- Re-checked on the row as it is once locked: of two guardians taking a passed lease at
        -- once, the second finds it held by the first.
        ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
         WHERE NOT coalesce(l.holder <> $1 AND l.until >= now()
                            AND (l.until <= now() + make_interval(secs => $2)
                                 OR EXISTS (SELECT 1 FROM sisy.hosts h
                                             WHERE h.name = l.holder AND h.lease_until >= now()))
                            AND (l.name NOT LIKE 'pool:%'
                                 OR EXISTS (SELECT 1 FROM sisy.hosts h
                                             WHERE h.name = l.holder AND NOT h.draining
                                               AND substr(l.name, 6) = ANY (h.pools))), false)
     RETURNING name
    ), lost AS (
        UPDATE sisy.runs
           SET state = 'lost', finished_at = now(),
               error = format('the guardian on %s stopped heartbeating (lease expired); declared lost by %s',
                              runs.host, $1::text)
          FROM sisy.hosts h
         WHERE EXISTS (SELECT 1 FROM held WHERE name = 'rescue')
           AND h.lease_until < now() AND h.name <> $1
           AND runs.host = h.name AND runs.state = 'running'
           -- A database that restarted less than a lease ago gave nobody the chance to renew.
           AND pg_postmaster_start_time() < now() - make_interval(secs => $2)
     RETURNING runs.id
    )
    SELECT (SELECT draining FROM me) AS draining,
           -- Read again only when the renewal found no row of this incarnation. This statement's
           -- snapshot may still show this incarnation's row when the renewal found it deleted
           -- meanwhile (it waited on the DELETE): that row is gone, not another process's.
           coalesce((SELECT started_at FROM me),
                    (SELECT started_at FROM sisy.hosts WHERE name = $1 AND started_at <> $8)) AS holder,
           coalesce((SELECT array_agg(id) FROM mine), '{}') AS alive,
           coalesce((SELECT array_agg(id) FROM mine WHERE kill_requested), '{}') AS kill_requested,
           (SELECT count(*) FROM lost) AS lost,
           (SELECT count(*) FROM unknown) AS unknown,
           coalesce((SELECT array_agg(name ORDER BY name) FROM held), '{}') AS leases;
END $fn$;
REVOKE EXECUTE ON FUNCTION sisy.guardian_beat(text, float8, int, bigint[], int[], text[], boolean,
                                              timestamptz, boolean) FROM PUBLIC;

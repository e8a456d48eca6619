-- One statement per tick renews this host's lease and the heartbeat of the runs it holds,
-- gives up runs the database says are running here that this guardian no longer knows, and
-- (when $7 and this guardian holds the `rescue` lease) declares the running runs of hosts
-- whose lease has passed `lost`. See heartbeat.rs for when a guardian may judge other hosts.
--   $1 host  $2 lease seconds  $3 capacity  $4 run ids held here  $5 their pids  $6 pools
--   $7 rescue others  $8 this process's incarnation (hosts.started_at from its registration)
-- Returns the runs still running here (an id missing from it was taken away: fencing),
-- those with a kill request, whether the host is draining, and the counts of runs declared lost.
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
), rescuer AS (
    INSERT INTO sisy.leases AS l (name, holder, until)
    SELECT 'rescue', $1, now() + make_interval(secs => $2)
     WHERE $7 AND EXISTS (SELECT 1 FROM me)
       AND NOT EXISTS (SELECT 1 FROM sisy.leases c
                        WHERE c.name = 'rescue' AND c.holder <> $1 AND c.until >= now()
                          AND (c.until <= now() + make_interval(secs => $2)
                               OR EXISTS (SELECT 1 FROM sisy.hosts h
                                           WHERE h.name = c.holder AND h.lease_until >= now())))
    -- Re-checked on the row as it is once locked: of two guardians taking a passed lease at
    -- once, the second finds it held by the first.
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
     WHERE NOT coalesce(l.holder <> $1 AND l.until >= now()
                        AND (l.until <= now() + make_interval(secs => $2)
                             OR EXISTS (SELECT 1 FROM sisy.hosts h
                                         WHERE h.name = l.holder AND h.lease_until >= now())), false)
 RETURNING holder
), lost AS (
    UPDATE sisy.runs
       SET state = 'lost', finished_at = now(),
           error = format('the guardian on %s stopped heartbeating (lease expired); declared lost by %s',
                          runs.host, $1::text)
      FROM sisy.hosts h
     WHERE EXISTS (SELECT 1 FROM rescuer)
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
       (SELECT count(*) FROM unknown) AS unknown

-- One statement per tick renews this host's lease and the heartbeat of the runs it holds,
-- gives up runs the database says are running here that this guardian no longer knows, and
-- (when $7) declares the running runs of hosts whose lease has passed `lost`. See
-- heartbeat.rs for when a guardian may judge other hosts.
--   $1 host  $2 lease seconds  $3 capacity  $4 run ids held here  $5 their pids  $6 pools
--   $7 rescue others  $8 this process's incarnation (hosts.started_at from its registration)
-- Returns the runs still running here (an id missing from it was taken away: fencing),
-- those with a kill request, whether the host is draining, and the counts of runs declared lost.
-- The lease is renewed only for this process's incarnation: after a pause that let the lease
-- lapse, another process may have registered the name; `holder` (the row's incarnation, NULL
-- when the row is gone) then tells the guardian it no longer owns the name.
WITH me AS (
    UPDATE sisy.hosts
       SET last_seen = now(), lease_until = now() + make_interval(secs => $2),
           capacity = $3, running = cardinality($4::bigint[]), pools = $6
     WHERE name = $1 AND started_at = $8
 RETURNING draining
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
), lost AS (
    UPDATE sisy.runs
       SET state = 'lost', finished_at = now(),
           error = format('the guardian on %s stopped heartbeating (lease expired); declared lost by %s',
                          runs.host, $1::text)
     WHERE $7 AND runs.state = 'running' AND runs.host <> $1
       -- A database that restarted less than a lease ago gave nobody the chance to renew.
       AND pg_postmaster_start_time() < now() - make_interval(secs => $2)
       AND NOT EXISTS (SELECT 1 FROM sisy.hosts h WHERE h.name = runs.host AND h.lease_until >= now())
 RETURNING runs.id
)
SELECT (SELECT draining FROM me) AS draining,
       (SELECT started_at FROM sisy.hosts WHERE name = $1) AS holder,
       coalesce((SELECT array_agg(id) FROM mine), '{}') AS alive,
       coalesce((SELECT array_agg(id) FROM mine WHERE kill_requested), '{}') AS kill_requested,
       (SELECT count(*) FROM lost) AS lost,
       (SELECT count(*) FROM unknown) AS unknown

-- `sisy jobs edit NAME --after …`, first of two: the job's edges to upstreams that are no
-- longer given go (before the job's row changes, so that a job losing its upstreams may
-- get a schedule in the same edit). Kept edges keep their condition.
--   $1 job  $2 the upstreams it runs after from now on
DELETE FROM sisy.dependencies WHERE job = $1 AND upstream <> ALL ($2::text[])

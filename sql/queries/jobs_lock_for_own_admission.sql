-- Serialises the admission of runs that are this host's own: of jobs without max_concurrency
-- whose runs here are all targeted at this host (a `target = 'all'` occurrence's are). The
-- overlap rules compare the runs of one job and one target host, and only this host claims
-- those, so the guardians of other hosts have nothing to wait for: the twenty hosts of a pool
-- admitting their runs of one `all` occurrence used to queue on the job row, one after
-- another (a second at a thousand guardians, the pool's lease holder among them, its claims
-- waiting too). A transaction-level advisory lock per (host, job), which works through a
-- transaction pooler, still orders two processes of one host name (an old one paused past
-- its lease and the one that took the name over).
-- Returns each job's max_concurrency as it is now: a cap set since the claim is counted
-- fleet-wide, so that job is then locked as jobs_lock_for_admission.sql does.
-- In the order of $1 (the function scan reads it in order; the lateral call is made per row).
--   $1 job ids, ascending  $2 host
SELECT k.id, (SELECT j.max_concurrency FROM sisy.jobs j WHERE j.id = k.id) AS max_concurrency
  FROM unnest($1::bigint[]) AS k (id),
       LATERAL pg_advisory_xact_lock(hashtext($2), hashint8(k.id)) AS lock

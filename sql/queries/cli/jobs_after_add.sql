-- `sisy jobs add/edit NAME --after …`, the edges to upstreams the job does not run after
-- yet (after the job's row is written, so that an edit clearing its schedule comes first).
-- The validation trigger refuses a cycle, a second root, a scheduled job, an unknown job.
--   $1 job  $2 upstreams
INSERT INTO sisy.dependencies (job, upstream)
SELECT DISTINCT $1::text, u FROM unnest($2::text[]) AS u
 WHERE NOT EXISTS (SELECT 1 FROM sisy.dependencies d WHERE d.job = $1 AND d.upstream = u)
 ORDER BY u

-- 0020: the runs that ended badly, in an index of their own, for the dashboard.
-- compatible-with: 12
--
-- Compatible with a sisy built for schema 12: it only adds an index.
--
-- `sisy web` lists runs by state (failed, timed out, lost, …) and the missed occurrences
-- (expired, skipped), newest first. Without an index those pages read the primary key
-- backwards until a page of matches is found: the whole history of 1,000,000 runs when the
-- state is rare (BENCHMARKS.md, "Dashboard"). The index holds only the row versions that
-- ended badly: a run that succeeds (most of them) never enters it, so the guardians' cost
-- per run does not change; a pending or running row version is not in it either.
CREATE INDEX runs_outcome ON sisy.runs (state, id DESC)
    WHERE state NOT IN ('pending', 'running', 'succeeded');

-- 0020: the runs that ended badly, and each host's runs, in indexes of their own, for the
-- dashboard.
-- compatible-with: 12
--
-- Compatible with a sisy built for schema 12: it only adds indexes.
--
-- `sisy web` lists runs by state (failed, timed out, lost, …) and the missed occurrences
-- (expired, skipped), newest first. Without an index those pages read the primary key
-- backwards until a page of matches is found: the whole history of 1,000,000 runs when the
-- state is rare (BENCHMARKS.md, "Dashboard"). The index holds only the row versions that
-- ended badly: a run that succeeds (most of them) never enters it, so the guardians' cost
-- per run does not change; a pending or running row version is not in it either.
-- It carries the finish time and the missed count, so that the fleet page counts the last
-- day's failures and misses from the index alone (4.8 and 2.2 ms over 1,000,000 runs, against
-- 84 and 19 ms through runs_finished).
CREATE INDEX runs_outcome ON sisy.runs (state, id DESC) INCLUDE (finished_at, missed_count)
    WHERE state NOT IN ('pending', 'running', 'succeeded');

-- A host's runs, newest first (`sisy web`, /runs?host=). Without it, a host with few runs
-- meant reading the whole history backwards: 126 ms for a host with 324 of 1,023,000 runs,
-- 303 ms for a host with none. Every run version that has a host enters it (the running
-- one and the finished one: two entries a run); a pending run has none.
CREATE INDEX runs_host ON sisy.runs (host, id DESC) WHERE host IS NOT NULL;

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

-- A host's finished runs, newest first (`sisy web`, /runs?host=; its running ones are found
-- through runs_running_host). Without it, a host with few runs meant reading the whole
-- history backwards: 126 ms for a host with 324 of 1,023,000 runs, 303 ms for a host with
-- none. Only a run's finished version enters it: one entry a run. An index of every version
-- with a host (the running one too) cost the guardians about 20 µs of PostgreSQL's CPU per
-- run, two points of the throughput target (BENCHMARKS.md, "Dashboard").
CREATE INDEX runs_host ON sisy.runs (host, id DESC)
    WHERE host IS NOT NULL AND state NOT IN ('pending', 'running');

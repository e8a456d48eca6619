-- 0017: autovacuum visits sisy.runs after a fixed number of dead row versions, whatever the
-- size of the history, and always cleans its indexes.
-- compatible-with: 12
--
-- Compatible with a sisy built for schema 12: it only sets storage parameters of
-- sisy.runs, which no statement of sisy reads.
--
-- sisy.runs is a queue and a history in one table. Every run leaves dead entries at the
-- left (oldest) end of the partial indexes the hot path reads: its pending version in
-- runs_pending_due (the claim, the tick), its running version in runs_running and
-- runs_running_host (admission, the heartbeat). New entries go to the right-hand end, so
-- nothing but VACUUM ever frees those pages, and every claim walks them. By default
-- autovacuum comes once 20 % of the table is dead: with ten million finished runs (one day
-- at 116 runs a second, `history_retention = "1d"`) that is two million dead versions, a
-- cycle of some 70 minutes, at whose end the claim read 4,968 buffers and took 5.95 ms
-- where it takes 0.35 ms on a small table (17x; the tick 20 ms; BENCHMARKS.md, History).
--
-- * autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000: a vacuum
--   after 10,000 dead versions, however large the history. At 116 runs a second the count
--   autovacuum goes by grows by some 240 a second (about two per run: the versions that
--   page pruning removes on the way are not counted), so 10,000 come within a minute and
--   autovacuum, which looks at a database once per autovacuum_naptime (1 min), vacuums
--   at every look. With 20,000 it came at every other look, two minutes apart, and claims
--   across the cycle were 1.37x the small table's; the fewer dead entries a cycle leaves,
--   the fewer a claim walks, whatever the rate. Each vacuum reads every index whole: 2.1 GB
--   at ten million rows, 8 s throttled, under 2 s of CPU.
-- * vacuum_index_cleanup = on: since PostgreSQL 14, VACUUM skips the index pass when fewer
--   than 2 % of the table's pages hold dead items (vacuumlazy.c, BYPASS_THRESHOLD_PAGES,
--   "index scan bypassed" in its log). A minute's dead versions lay on 0.31 to 0.35 % of
--   the ten-million-row table's pages, so every vacuum would have been bypassed and left
--   exactly the index entries the claim walks. Older servers have no bypass; `on` is
--   what they do anyway.
-- The insert thresholds stay: every run is updated after its insert, so the dead versions
-- bring the vacuum first. The cost delay stays (2 ms): a throttled vacuum took 8 s, well
-- under a naptime.
ALTER TABLE sisy.runs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    vacuum_index_cleanup = on
);

-- 0014: kill requests found by a poll. A guardian that does not LISTEN (`listen = false`,
-- through a transaction pooler) asks for the kill requests on its runs at every pass of its
-- dispatcher (sql/queries/runs_tick.sql), every `poll_interval`: this index holds only the
-- running runs with a kill request, so the question reads a few rows, however large the fleet.
-- compatible-with: 12
CREATE INDEX runs_kill_requested ON sisy.runs (host)
 WHERE state = 'running' AND kill_requested_at IS NOT NULL;

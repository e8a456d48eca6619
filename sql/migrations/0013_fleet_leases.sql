-- 0013: a heartbeat's cost follows its own host, not the fleet.
-- compatible-with: 12
--
-- Compatible with a sisy built for schema 12: it adds an index, a table and a trigger; a
-- guardian of that version still renews its lease and rescues dead hosts' runs (without the
-- lease below: every such guardian judges, as before).
--
-- * runs_running_host: a host's own running runs (its heartbeat, its start-up, the runs of a
--   dead host) are read through this index, not by reading every running run of the fleet.
-- * fillfactor of sisy.hosts: every beat updates its host's row in columns no index covers;
--   room left on each page lets that update stay on the page (HOT) instead of adding an
--   entry to the primary key. Not on sisy.runs: room on its pages spreads a fan-out's items
--   over almost twice the pages, which every scan of a member's items then reads.
-- * sisy.leases: named leases in a row each, taken and renewed by single statements (no
--   session state: they work through a pooler in transaction mode). `rescue` is held by the
--   one guardian that declares dead hosts' runs lost, renewed by its heartbeat; when it
--   passes (or its holder's host lease passes) the next guardian to beat takes it over.
-- * A host row deleted by hand while runs were running on it: those runs are declared lost
--   at once (the rescue finds dead hosts through their rows, so a run whose row is gone
--   would otherwise be found by nobody).

CREATE INDEX runs_running_host ON sisy.runs (host) WHERE state = 'running';

ALTER TABLE sisy.hosts SET (fillfactor = 80);

CREATE TABLE sisy.leases (
    name   text PRIMARY KEY,
    holder text,
    until  timestamptz
);

CREATE FUNCTION sisy.hosts_forget_runs() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE sisy.runs
       SET state = 'lost', finished_at = now(),
           error = format('the host row of %s was deleted while the run was in progress', OLD.name)
     WHERE host = OLD.name AND state = 'running';
    RETURN OLD;
END $$;
REVOKE EXECUTE ON FUNCTION sisy.hosts_forget_runs() FROM PUBLIC;

CREATE TRIGGER hosts_forget_runs AFTER DELETE ON sisy.hosts
    FOR EACH ROW EXECUTE FUNCTION sisy.hosts_forget_runs();

-- Rows deleted before this trigger existed: their runs, which the rescue used to find, are
-- lost now, as the next heartbeat of any guardian would have declared them.
UPDATE sisy.runs
   SET state = 'lost', finished_at = now(),
       error = format('the host row of %s was deleted while the run was in progress', host)
 WHERE state = 'running' AND host IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM sisy.hosts h WHERE h.name = runs.host);

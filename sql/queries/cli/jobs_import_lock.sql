-- import-crontab: one import at a time (for the rest of the transaction), so that imports
-- run at once each see the jobs the others made instead of racing to create them. The
-- constant names this lock among the database's advisory locks ("SISYIMPT").
SELECT pg_advisory_xact_lock(6001419621394894932)

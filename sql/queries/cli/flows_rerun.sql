-- `sisy flows rerun ID [--from JOB]`: how many members were queued again.
SELECT sisy.rerun_flow($1, $2)

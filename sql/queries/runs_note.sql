-- A run that is no longer running here (declared lost meanwhile) gets what this host saw
-- appended to its error: that its processes were killed (fencing, the watchdog), or the
-- result its process reached on its own. The verdict stays; output fills a gap only.
--   $1 id  $2 sentence  $3 output  $4 output bytes
UPDATE sisy.runs
   SET error = coalesce(error || '; ', '') || $2::text,
       output = coalesce(output, $3), output_bytes = coalesce(output_bytes, $4)
 WHERE id = $1 AND state NOT IN ('pending', 'running')
   -- Said once, even if the write is repeated.
   AND position($2::text IN coalesce(error, '')) = 0

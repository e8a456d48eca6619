-- A run declared lost while its process still ran here: say that this host killed it.
UPDATE sisy.runs
   SET error = coalesce(error || '; ', '') || format('its process on %s was killed when that guardian found the run declared lost', $2::text),
       output = coalesce(output, $3), output_bytes = coalesce(output_bytes, $4)
 WHERE id = $1 AND state = 'lost'

-- overlap = 'forbid': the occurrence is recorded as skipped, with the run that held it.
UPDATE sisy.runs SET state = 'skipped', finished_at = now(), error = x.error
  FROM unnest($1::bigint[], $2::text[]) AS x (id, error)
 WHERE runs.id = x.id AND runs.state = 'running' AND runs.host = $3

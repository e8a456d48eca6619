SELECT to_jsonb(r) - 'output' || jsonb_build_object('output_kept', length(r.output))
  FROM sisy.runs r WHERE id = $1

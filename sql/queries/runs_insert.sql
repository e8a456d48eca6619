-- Materialised occurrences (pending, or one coalesced `expired` row) in one statement.
-- The unique key makes a second insert of the same occurrence a no-op.
INSERT INTO sisy.runs (job_id, job_name, pool, scheduled_for, reason, target_host, due_at,
                       deadline, state, finished_at, error, missed_count)
SELECT r.job_id, r.job_name, r.pool, r.scheduled_for, 'schedule', r.target_host, r.due_at,
       r.deadline, r.state, CASE WHEN r.state = 'expired' THEN now() END, r.error, r.missed_count
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
              $6::timestamptz[], $7::timestamptz[], $8::text[], $9::text[], $10::bigint[])
       AS r (job_id, job_name, pool, scheduled_for, target_host, due_at, deadline, state, error, missed_count)
    ON CONFLICT ON CONSTRAINT runs_occurrence_key DO NOTHING

-- Records the next occurrence (or why there is none) of each job in one statement.
UPDATE sisy.jobs
   SET next_due = x.next_due, schedule_error = x.schedule_error
  FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS x (id, next_due, schedule_error)
 WHERE jobs.id = x.id

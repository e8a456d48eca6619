SELECT to_jsonb(s) FROM sisy.job_status s ORDER BY name

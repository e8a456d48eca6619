SELECT to_jsonb(h) FROM sisy.host_status h ORDER BY name

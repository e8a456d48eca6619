-- The applied migrations and what each declared about older binaries. Read through jsonb so
-- that a database migrated before the column existed reads as "no declarations".
SELECT version, name, (to_jsonb(m) ->> 'compatible_with')::int AS compatible_with
  FROM sisy.migrations m
 ORDER BY version

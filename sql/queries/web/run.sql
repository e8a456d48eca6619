-- The dashboard's run page: one run whole (its output included, its flow inputs and result
-- as text), or no row.
--   $1 run id
SELECT to_jsonb(r) - 'inputs' - 'result' - 'item'
       || jsonb_build_object('inputs', r.inputs::text, 'result', r.result::text,
                             'item', r.item::text)
  FROM sisy.runs r WHERE r.id = $1

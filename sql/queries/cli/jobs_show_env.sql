-- A job's env values: only for `sisy jobs show --show-env-values`, by a role that may read
-- them (sisy_admin; sisy_reader has no SELECT on this column).
SELECT env FROM sisy.jobs WHERE name = $1

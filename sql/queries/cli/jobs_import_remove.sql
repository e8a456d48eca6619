-- import-crontab: a job gone from its file (its pending runs are cancelled by a trigger,
-- its history stays).
DELETE FROM sisy.jobs WHERE id = $1

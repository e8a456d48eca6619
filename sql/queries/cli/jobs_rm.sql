DELETE FROM sisy.jobs WHERE name = $1 RETURNING id

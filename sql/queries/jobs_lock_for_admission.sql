-- Serialises the start of runs of the same job across guardians (overlap rules). In id
-- order, so that two guardians locking several jobs never deadlock.
SELECT id FROM sisy.jobs WHERE id = ANY ($1) ORDER BY id FOR NO KEY UPDATE

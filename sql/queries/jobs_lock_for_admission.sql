-- Serialises the start of runs of the same job across guardians (overlap rules and
-- max_concurrency, read here under the lock so that a change applies to the next admission).
-- In id order, so that two guardians locking several jobs never deadlock.
SELECT id, max_concurrency FROM sisy.jobs WHERE id = ANY ($1) ORDER BY id FOR NO KEY UPDATE

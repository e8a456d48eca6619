-- `sisy runs kill ID`: asks the run's guardian (or admission) to stop it.
SELECT sisy.kill($1)

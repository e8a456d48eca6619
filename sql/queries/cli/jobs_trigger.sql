-- `sisy jobs trigger NAME`: a run now; returns its id.
SELECT sisy.trigger($1)

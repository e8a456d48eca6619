-- `sisy runs retry ID`: a new attempt of a finished run; returns its id.
SELECT sisy.retry($1)

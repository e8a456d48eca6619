-- `sisy jobs suspend NAME`: through the control function, which checks the caller's rights.
SELECT sisy.suspend($1)

-- `sisy jobs resume NAME`: through the control function, which checks the caller's rights.
SELECT sisy.resume($1)

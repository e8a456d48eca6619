-- `sisy flows cancel ID`: pending members cancelled, running ones killed, flow run cancelled.
SELECT sisy.cancel_flow($1)

-- The flows' safety net, when the tick says it is due: flow runs past their flow_timeout are
-- timed out (running members killed, pending ones cancelled), and running flow runs not
-- looked at for a while are re-decided from what their runs say. See 0010_flow_engine.sql.
SELECT sisy.flows_tend() AS handled

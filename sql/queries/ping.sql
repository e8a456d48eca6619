-- A trivial question: does a quiet connection still answer (see the listener)?
SELECT 1

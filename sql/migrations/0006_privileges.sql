-- 0006: the control functions and the triggers that write other tables run with the
-- rights of the schema's owner (SECURITY DEFINER, with a fixed search_path so that no
-- caller can substitute objects), so that roles need only the narrow grants of
-- sql/roles.sql: an admin may call sisy.kill without UPDATE on sisy.runs. Nobody but the
-- owner may call them until `sisy db roles` grants them.

ALTER FUNCTION sisy.trigger(text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sisy.kill(bigint) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sisy.retry(bigint) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sisy.set_suspended(text, boolean) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sisy.set_draining(text, boolean) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sisy.jobs_cancel_pending() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION sisy.runs_state_changed() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE EXECUTE ON FUNCTION sisy.trigger(text), sisy.kill(bigint), sisy.retry(bigint),
    sisy.set_suspended(text, boolean), sisy.suspend(text), sisy.resume(text),
    sisy.set_draining(text, boolean), sisy.drain(text), sisy.undrain(text) FROM PUBLIC;

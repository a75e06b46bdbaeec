-- PostgreSQL statements of migration 10: a change to terminals, wallet apps or merchants
-- notifies every gateway on the order channel with the payload 'registry', and each clears its
-- in-memory copy (registry/cache.rs).
CREATE FUNCTION posbridge_notify_registry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('posbridge_orders_' || current_schema(), 'registry');
    RETURN NULL;
END $$
/
CREATE TRIGGER terminals_notify AFTER INSERT OR UPDATE OR DELETE ON terminals FOR EACH STATEMENT EXECUTE FUNCTION posbridge_notify_registry()
/
CREATE TRIGGER wallet_apps_notify AFTER INSERT OR UPDATE OR DELETE ON wallet_apps FOR EACH STATEMENT EXECUTE FUNCTION posbridge_notify_registry()
/
CREATE TRIGGER merchants_notify AFTER INSERT OR UPDATE OR DELETE ON merchants FOR EACH STATEMENT EXECUTE FUNCTION posbridge_notify_registry()

-- PostgreSQL statement of migration 6.
CREATE SEQUENCE upstream_stan MINVALUE 1 MAXVALUE 999999 CYCLE
/
-- Wake-ups across gateways: every order event notifies the schema's channel with the order id,
-- delivered when its transaction commits (LISTEN/NOTIFY), so a terminal held on one gateway
-- learns at once of a payment made through another.
CREATE FUNCTION posbridge_notify_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('posbridge_orders_' || current_schema(), NEW.order_id);
    RETURN NEW;
END $$
/
CREATE TRIGGER order_events_notify AFTER INSERT ON order_events FOR EACH ROW EXECUTE FUNCTION posbridge_notify_order()

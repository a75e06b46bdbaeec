-- PostgreSQL statements of migration 13: an order's first event (its creation, the only one
-- with no previous state) notifies no one, since no one waits on an order before it exists;
-- every later event still does (held terminal requests wait for an order to leave CREATED).
DROP TRIGGER order_events_notify ON order_events
/
CREATE TRIGGER order_events_notify AFTER INSERT ON order_events FOR EACH ROW
    WHEN (NEW.from_state IS NOT NULL) EXECUTE FUNCTION posbridge_notify_order()

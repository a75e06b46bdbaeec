-- PostgreSQL statements of migration 17: an order's change is no longer notified by a trigger
-- inside the transaction that makes it. A NOTIFY in a transaction takes the database's one
-- notification lock when that transaction commits and holds it until the commit is flushed to
-- disk, so every payment's commit waited for the previous one's flush (no group commit). The
-- gateway now sends the notification itself right after the COMMIT, in the same round trip, as
-- a transaction of its own that writes nothing (Tx::announce_order).
DROP TRIGGER IF EXISTS order_events_notify ON order_events
/
DROP FUNCTION IF EXISTS posbridge_notify_order()

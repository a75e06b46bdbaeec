-- Migration 15: the index of open orders holds open orders only. The expiry sweep (state
-- CREATED, oldest expiry first) is its one reader; as a full index on (state, expires_at_ms)
-- it grew with every order ever made, and every order's move out of CREATED wrote a new entry
-- into it. A partial index gets an entry at creation only and loses it with the old row
-- version once the order is paid, expired or cancelled.
DROP INDEX orders_open;
CREATE INDEX orders_open ON orders (expires_at_ms) WHERE state = 'CREATED'

-- The upstream STAN (F11) comes from the journal, so gateways sharing it, and a gateway after a
-- restart, never hand out the same one in the same cycle: a sequence on PostgreSQL (no row lock
-- between concurrent sales), a counter row on SQLite (one process holds the write lock anyway).

CREATE TABLE counters (
    name   TEXT PRIMARY KEY,
    value  BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('upstream_stan', 0)

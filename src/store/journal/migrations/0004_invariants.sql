-- Money invariants the database enforces itself, whatever the application does: every
-- movement is a transfer whose two postings the database writes (so they sum to zero), both
-- accounts in the transfer's currency; RRNs unique per acquirer; a repeated terminal request
-- answered from its first answer.

CREATE TABLE transfers (
    transfer_id    TEXT PRIMARY KEY,
    order_id       TEXT NOT NULL,
    kind           TEXT NOT NULL,          -- 'funding', 'sale', 'refund' or 'reversal'
    from_account   TEXT NOT NULL REFERENCES accounts (account_id),
    to_account     TEXT NOT NULL REFERENCES accounts (account_id),
    amount_minor   BIGINT NOT NULL,
    currency       BIGINT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    CHECK (amount_minor > 0),
    CHECK (from_account <> to_account)
);
CREATE INDEX transfers_order ON transfers (order_id);

ALTER TABLE postings ADD COLUMN transfer_id TEXT;
CREATE UNIQUE INDEX postings_leg ON postings (transfer_id, account_id);

CREATE UNIQUE INDEX orders_rrn ON orders (COALESCE(acquirer, ''), rrn) WHERE rrn IS NOT NULL;

CREATE TABLE terminal_requests (
    tid            TEXT NOT NULL,
    mti            TEXT NOT NULL,
    batch          TEXT NOT NULL,
    stan           TEXT NOT NULL,
    response_code  TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (tid, mti, batch, stan)
)

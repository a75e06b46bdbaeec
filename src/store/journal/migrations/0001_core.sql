-- posbridge journal and ledger, version 1. Portable between PostgreSQL and SQLite: BIGINT,
-- TEXT and {BYTES} only; identifiers come from the application; times are Unix milliseconds.

CREATE TABLE merchants (
    mid             TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    city            TEXT NOT NULL,
    mcc             TEXT NOT NULL,
    country         TEXT NOT NULL,
    currency        BIGINT NOT NULL,
    account_id      TEXT NOT NULL,
    webhook_url     TEXT,
    webhook_secret  TEXT,
    created_at_ms   BIGINT NOT NULL
);

CREATE TABLE terminals (
    tid               TEXT PRIMARY KEY,
    mid               TEXT NOT NULL REFERENCES merchants (mid),
    acquirer          TEXT NOT NULL,
    master_key_label  TEXT NOT NULL,
    enabled           BIGINT NOT NULL DEFAULT 1,
    -- Working keys as last issued at sign-on, encrypted under the terminal master key, so a
    -- restarted gateway can load them back into the security module.
    tpk_cryptogram    {BYTES},
    tak_cryptogram    {BYTES},
    tpk_kcv           {BYTES},
    tak_kcv           {BYTES},
    signed_on_at_ms   BIGINT,
    created_at_ms     BIGINT NOT NULL
);

CREATE TABLE accounts (
    account_id     TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,          -- 'payer' or 'merchant'
    holder         TEXT NOT NULL,
    pan_truncated  TEXT,                   -- first 6 + last 4 at most
    pan_hash       {BYTES} UNIQUE,         -- keyed hash, for lookup without the PAN
    currency       BIGINT NOT NULL,
    balance_minor  BIGINT NOT NULL,
    pvv            TEXT,                   -- PIN verification value (never a PIN or PIN block)
    pvki           BIGINT,
    pin_tries      BIGINT NOT NULL DEFAULT 0,
    created_at_ms  BIGINT NOT NULL,
    CHECK (balance_minor >= 0)
);

CREATE TABLE wallet_apps (
    app_id         TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    key_hash       {BYTES} NOT NULL,       -- SHA-256 of the API key
    pek_label      TEXT NOT NULL,          -- security-module key the app encrypts PIN blocks under
    created_at_ms  BIGINT NOT NULL
);

CREATE TABLE orders (
    order_id          TEXT PRIMARY KEY,
    origin            TEXT NOT NULL,       -- 'gateway-code', 'terminal-code' or 'static'
    mid               TEXT NOT NULL,
    tid               TEXT,
    operator          TEXT,
    acquirer          TEXT,
    txn_type          TEXT NOT NULL,
    batch             TEXT,
    voucher           TEXT,
    amount_minor      BIGINT NOT NULL,
    currency          BIGINT NOT NULL,
    reference         TEXT NOT NULL UNIQUE,
    payload           TEXT NOT NULL,
    state             TEXT NOT NULL,
    response_code     TEXT,
    rrn               TEXT,
    auth_code         TEXT,
    payer_account_id  TEXT,
    payer_pan_masked  TEXT,
    created_at_ms     BIGINT NOT NULL,
    expires_at_ms     BIGINT NOT NULL,
    updated_at_ms     BIGINT NOT NULL,
    UNIQUE (tid, batch, voucher)
);
CREATE INDEX orders_open ON orders (state, expires_at_ms);

CREATE TABLE order_events (
    event_id       TEXT PRIMARY KEY,
    order_id       TEXT NOT NULL REFERENCES orders (order_id),
    from_state     TEXT,
    to_state       TEXT NOT NULL,
    detail         TEXT NOT NULL,
    at_ms          BIGINT NOT NULL
);
CREATE INDEX order_events_order ON order_events (order_id);

-- Every payment attempt, accepted or refused, as S107 requires.
CREATE TABLE attempts (
    attempt_id       TEXT PRIMARY KEY,
    order_id         TEXT,
    reference        TEXT,
    app_id           TEXT,
    pan_truncated    TEXT,
    pan_hash         {BYTES},
    amount_minor     BIGINT,
    currency         BIGINT,
    response_code    TEXT NOT NULL,
    reason           TEXT NOT NULL,
    created_at_ms    BIGINT NOT NULL
);

CREATE TABLE idempotency (
    app_id          TEXT NOT NULL,
    idem_key        TEXT NOT NULL,
    request_hash    {BYTES} NOT NULL,
    response        TEXT,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (app_id, idem_key)
);

-- Double-entry postings: every money movement is a set of rows summing to zero.
CREATE TABLE postings (
    posting_id     TEXT PRIMARY KEY,
    order_id       TEXT NOT NULL,
    account_id     TEXT NOT NULL REFERENCES accounts (account_id),
    amount_minor   BIGINT NOT NULL,
    currency       BIGINT NOT NULL,
    kind           TEXT NOT NULL,          -- 'sale' or 'reversal'
    created_at_ms  BIGINT NOT NULL
);
CREATE INDEX postings_order ON postings (order_id);

-- Merchant notifications (static codes), delivered from here with retries.
CREATE TABLE outbox (
    event_id            TEXT PRIMARY KEY,
    mid                 TEXT NOT NULL,
    url                 TEXT NOT NULL,
    body                TEXT NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT NOT NULL,
    delivered_at_ms     BIGINT,
    last_error          TEXT,
    created_at_ms       BIGINT NOT NULL
);
CREATE INDEX outbox_due ON outbox (delivered_at_ms, next_attempt_at_ms);

CREATE TABLE static_codes (
    code_id        TEXT PRIMARY KEY,
    mid            TEXT NOT NULL REFERENCES merchants (mid),
    label          TEXT NOT NULL,
    payload        TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL
);

CREATE TABLE settlements (
    settlement_id   TEXT PRIMARY KEY,
    tid             TEXT NOT NULL,
    batch           TEXT NOT NULL,
    terminal_count  BIGINT NOT NULL,
    terminal_total  BIGINT NOT NULL,
    journal_count   BIGINT NOT NULL,
    journal_total   BIGINT NOT NULL,
    balanced        BIGINT NOT NULL,
    created_at_ms   BIGINT NOT NULL
);

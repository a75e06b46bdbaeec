-- Five-role deployment: sales forwarded to acquirer / scheme / issuer hosts, their reversals
-- (armed before the sale is sent, so none is ever lost) and answers that matched nothing.

CREATE TABLE forwarded_sales (
    forward_id       TEXT PRIMARY KEY,
    order_id         TEXT NOT NULL REFERENCES orders (order_id),
    host             TEXT NOT NULL,
    mti              TEXT NOT NULL,
    stan             TEXT NOT NULL,
    rrn              TEXT NOT NULL,
    tid              TEXT NOT NULL,
    transmitted      TEXT NOT NULL,          -- F7, MMDDhhmmss
    amount_minor     BIGINT NOT NULL,
    currency         BIGINT NOT NULL,
    pan_truncated    TEXT NOT NULL,
    state            TEXT NOT NULL,          -- SENDING, APPROVED, DECLINED, NOT_SENT, AMBIGUOUS
    response_code    TEXT,
    auth_code        TEXT,
    created_at_ms    BIGINT NOT NULL,
    updated_at_ms    BIGINT NOT NULL
);
CREATE INDEX forwarded_sales_order ON forwarded_sales (order_id);

CREATE TABLE reversals (
    reversal_id         TEXT PRIMARY KEY,
    forward_id          TEXT NOT NULL UNIQUE REFERENCES forwarded_sales (forward_id),
    host                TEXT NOT NULL,
    status              TEXT NOT NULL,       -- STANDBY, QUEUED, DONE, CANCELLED, EXPIRED
    reason              TEXT,
    message             TEXT NOT NULL,       -- the 0400's fields (JSON); never a PAN or PIN block
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT NOT NULL,
    expires_at_ms       BIGINT NOT NULL,
    last_error          TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL
);
CREATE INDEX reversals_due ON reversals (status, next_attempt_at_ms);

CREATE TABLE unmatched_responses (
    unmatched_id    TEXT PRIMARY KEY,
    host            TEXT NOT NULL,
    mti             TEXT NOT NULL,
    stan            TEXT,
    tid             TEXT,
    rrn             TEXT,
    response_code   TEXT,
    detail          TEXT NOT NULL,
    received_at_ms  BIGINT NOT NULL
)

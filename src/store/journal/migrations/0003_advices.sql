-- Refund advices to upstream hosts (0220, repeat 0221): store and forward, like reversals.

CREATE TABLE advices (
    advice_id           TEXT PRIMARY KEY,
    forward_id          TEXT NOT NULL REFERENCES forwarded_sales (forward_id),
    host                TEXT NOT NULL,
    kind                TEXT NOT NULL,       -- 'refund'
    amount_minor        BIGINT NOT NULL,
    status              TEXT NOT NULL,       -- QUEUED, DONE, REFUSED, EXPIRED
    message             TEXT NOT NULL,       -- the advice's fields (JSON); never a PAN
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT NOT NULL,
    expires_at_ms       BIGINT NOT NULL,
    last_error          TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL
);
CREATE INDEX advices_due ON advices (status, next_attempt_at_ms)

-- One queue engine (store/queue.rs) for reversals, refund advices and webhooks: every queue
-- row has a status and a lease token, written when a gateway claims it and checked when it
-- records the outcome; the lease's end is the row's next_attempt_at_ms.

ALTER TABLE reversals ADD COLUMN lease_token TEXT;
ALTER TABLE advices ADD COLUMN lease_token TEXT;
ALTER TABLE outbox ADD COLUMN lease_token TEXT;
ALTER TABLE outbox ADD COLUMN status TEXT NOT NULL DEFAULT 'QUEUED';  -- QUEUED, DONE, FAILED
ALTER TABLE outbox ADD COLUMN updated_at_ms BIGINT NOT NULL DEFAULT 0;
UPDATE outbox SET status = 'DONE' WHERE delivered_at_ms IS NOT NULL;
UPDATE outbox SET status = 'FAILED' WHERE delivered_at_ms IS NULL AND attempts >= 12;
CREATE INDEX outbox_status_due ON outbox (status, next_attempt_at_ms)
;

-- Retrieval reference numbers (F37) from the journal, like STANs (migration 6): a sequence on
-- PostgreSQL (its statement), this counter row on SQLite.
INSERT INTO counters (name, value) VALUES ('rrn', 0)

-- What the journal must keep secret is sealed under the data key ([keys] data, a dek/ key in the
-- security module; AES-GCM bound to its row) and never stored in clear:
-- - a merchant's webhook secret (the clear column is emptied when the gateway starts and seals
--   what an older version stored there);
-- - the card number of a forwarded sale whose host wants field 2 in reversals and refund
--   advices, kept only while one may still be sent.

ALTER TABLE merchants ADD COLUMN webhook_secret_sealed {BYTES};
ALTER TABLE forwarded_sales ADD COLUMN pan_sealed {BYTES};
CREATE INDEX forwarded_sales_pan_held ON forwarded_sales (created_at_ms) WHERE pan_sealed IS NOT NULL

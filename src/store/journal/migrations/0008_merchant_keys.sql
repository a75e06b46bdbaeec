-- A merchant's API key for its payments list (GET /v1/merchants/{mid}/payments), kept as a
-- SHA-256 hash like the wallet apps' keys; the webhook secret only signs webhooks.

ALTER TABLE merchants ADD COLUMN api_key_hash {BYTES}

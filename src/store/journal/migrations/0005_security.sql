-- Security: a card is bound to the wallet app that enrolled it (NULL: any app, for accounts
-- enrolled before this version or by an operator without an app); a PIN lock has a time so an
-- operator (or the configured lock period) can lift it.

ALTER TABLE accounts ADD COLUMN app_id TEXT;
ALTER TABLE accounts ADD COLUMN pin_locked_at_ms BIGINT

-- Payment velocity limits count a card's and an app's attempts of the last minute.

CREATE INDEX attempts_card ON attempts (pan_hash, created_at_ms);
CREATE INDEX attempts_app ON attempts (app_id, created_at_ms)

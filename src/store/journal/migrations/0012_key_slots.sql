-- A terminal's working keys live in two slots of the security module (tak/<tid> and tpk/<tid>
-- for slot 0, tak/<tid>.1 and tpk/<tid>.1 for slot 1). key_slot is the one the terminal uses;
-- a sign-on issues new keys into the other slot (next_*) and they take over only when the
-- terminal's first request MACed under them arrives, so a sign-on by someone else (TID and MID
-- are printed on the terminal's codes) never locks the real terminal out.

ALTER TABLE terminals ADD COLUMN key_slot BIGINT NOT NULL DEFAULT 0;
ALTER TABLE terminals ADD COLUMN next_tpk_cryptogram {BYTES};
ALTER TABLE terminals ADD COLUMN next_tpk_kcv {BYTES};
ALTER TABLE terminals ADD COLUMN next_tak_cryptogram {BYTES};
ALTER TABLE terminals ADD COLUMN next_tak_kcv {BYTES}

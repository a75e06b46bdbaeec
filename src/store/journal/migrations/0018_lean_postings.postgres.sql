-- PostgreSQL statements of migration 18: a sale's transfer no longer costs four foreign-key
-- checks and two calls of the leg check (each a query or a function call of its own), with the
-- same money rules.
-- * The leg check (posbridge_check_posting) had returned at once for the two postings a
--   transfer's own trigger writes (pg_trigger_depth() > 1): a WHEN clause now skips its call
--   for any posting inserted from inside a trigger; a posting inserted by a statement of its
--   own is still checked against its transfer, and an update or delete of any posting is still
--   refused, by a trigger of its own. (The function's own depth test is now reached only by
--   a trigger that calls it without this clause; it is left rather than the function restated.)
-- * posbridge_post_transfer is restated whole below (PL/pgSQL has no partial change): migration
--   14's body with the unknown-account refusal and the funding account's key-share lock.
-- * The foreign key from a posting to its account repeated what is enforced already: a posting
--   is a leg of its transfer (by construction from the trigger, by the leg check otherwise),
--   and postings never change.
-- * The foreign keys from a transfer to its two accounts: the transfer's trigger reads both
--   accounts anyway (a balance update, or a locking read of a funding account) and now refuses
--   an unknown one itself; an account with transfers is kept by a trigger on the accounts
--   (refusing its deletion or a change of its id), which costs nothing on the sales' path.
ALTER TABLE postings DROP CONSTRAINT IF EXISTS postings_account_id_fkey
/
DROP TRIGGER IF EXISTS postings_legs ON postings
/
CREATE TRIGGER postings_legs BEFORE INSERT ON postings FOR EACH ROW
    WHEN (pg_trigger_depth() < 1) EXECUTE FUNCTION posbridge_check_posting()
/
CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE ON postings FOR EACH ROW
    EXECUTE FUNCTION posbridge_check_posting()
/
CREATE OR REPLACE FUNCTION posbridge_post_transfer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    from_currency BIGINT;
    to_currency BIGINT;
BEGIN
    -- A funding account's balance is what it issued, read from its postings: it stays 0 here.
    -- Its row is read with a key-share lock, as the foreign key did: it cannot go meanwhile.
    UPDATE accounts SET balance_minor = balance_minor - NEW.amount_minor
        WHERE account_id = NEW.from_account AND kind <> 'funding' RETURNING currency INTO from_currency;
    IF NOT FOUND THEN
        SELECT currency INTO from_currency FROM accounts WHERE account_id = NEW.from_account FOR KEY SHARE;
    END IF;
    UPDATE accounts SET balance_minor = balance_minor + NEW.amount_minor
        WHERE account_id = NEW.to_account AND kind <> 'funding' RETURNING currency INTO to_currency;
    IF NOT FOUND THEN
        SELECT currency INTO to_currency FROM accounts WHERE account_id = NEW.to_account FOR KEY SHARE;
    END IF;
    IF from_currency IS NULL OR to_currency IS NULL THEN
        RAISE EXCEPTION 'transfer % names an unknown account', NEW.transfer_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF from_currency <> NEW.currency OR to_currency <> NEW.currency THEN
        RAISE EXCEPTION 'transfer % mixes currencies', NEW.transfer_id USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO postings (posting_id, order_id, account_id, amount_minor, currency, kind, created_at_ms, transfer_id)
        VALUES (NEW.transfer_id || '-d', NEW.order_id, NEW.from_account, -NEW.amount_minor, NEW.currency, NEW.kind, NEW.created_at_ms, NEW.transfer_id),
               (NEW.transfer_id || '-c', NEW.order_id, NEW.to_account, NEW.amount_minor, NEW.currency, NEW.kind, NEW.created_at_ms, NEW.transfer_id);
    RETURN NEW;
END $$
/
ALTER TABLE transfers DROP CONSTRAINT IF EXISTS transfers_from_account_fkey
/
ALTER TABLE transfers DROP CONSTRAINT IF EXISTS transfers_to_account_fkey
/
CREATE FUNCTION posbridge_keep_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP = 'DELETE' OR NEW.account_id IS DISTINCT FROM OLD.account_id)
        AND EXISTS (SELECT 1 FROM transfers t WHERE t.from_account = OLD.account_id OR t.to_account = OLD.account_id) THEN
        RAISE EXCEPTION 'account % has transfers: it is kept', OLD.account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$
/
CREATE TRIGGER accounts_keep BEFORE DELETE OR UPDATE OF account_id ON accounts FOR EACH ROW
    EXECUTE FUNCTION posbridge_keep_accounts()

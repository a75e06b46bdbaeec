-- PostgreSQL statements of migration 14: the same money rules as migration 4, in fewer
-- statements per transfer (each one a query the trigger runs for every sale).
-- * A transfer reads each account's currency from the row its balance update returns, instead
--   of a separate count first; a funding account (whose balance is not moved) is read.
-- * A posting written by a transfer's own trigger, one level down (pg_trigger_depth() = 2), is a
--   leg of that transfer by construction: it is not looked up again. Any other insert (depth
--   1: a statement of its own) is still checked against its transfer, and postings still can
--   never be changed or deleted.
CREATE OR REPLACE FUNCTION posbridge_post_transfer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    from_currency BIGINT;
    to_currency BIGINT;
BEGIN
    -- A funding account's balance is what it issued, read from its postings: it stays 0 here.
    UPDATE accounts SET balance_minor = balance_minor - NEW.amount_minor
        WHERE account_id = NEW.from_account AND kind <> 'funding' RETURNING currency INTO from_currency;
    IF NOT FOUND THEN
        SELECT currency INTO from_currency FROM accounts WHERE account_id = NEW.from_account;
    END IF;
    UPDATE accounts SET balance_minor = balance_minor + NEW.amount_minor
        WHERE account_id = NEW.to_account AND kind <> 'funding' RETURNING currency INTO to_currency;
    IF NOT FOUND THEN
        SELECT currency INTO to_currency FROM accounts WHERE account_id = NEW.to_account;
    END IF;
    IF from_currency IS DISTINCT FROM NEW.currency OR to_currency IS DISTINCT FROM NEW.currency THEN
        RAISE EXCEPTION 'transfer % mixes currencies', NEW.transfer_id USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO postings (posting_id, order_id, account_id, amount_minor, currency, kind, created_at_ms, transfer_id)
        VALUES (NEW.transfer_id || '-d', NEW.order_id, NEW.from_account, -NEW.amount_minor, NEW.currency, NEW.kind, NEW.created_at_ms, NEW.transfer_id),
               (NEW.transfer_id || '-c', NEW.order_id, NEW.to_account, NEW.amount_minor, NEW.currency, NEW.kind, NEW.created_at_ms, NEW.transfer_id);
    RETURN NEW;
END $$
/
CREATE OR REPLACE FUNCTION posbridge_check_posting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'postings are never changed or deleted' USING ERRCODE = 'check_violation';
    END IF;
    IF pg_trigger_depth() > 1 THEN
        RETURN NEW; -- written by posbridge_post_transfer from its own NEW row
    END IF;
    IF NOT EXISTS (SELECT 1 FROM transfers t WHERE t.transfer_id = NEW.transfer_id AND t.currency = NEW.currency
        AND ((t.from_account = NEW.account_id AND NEW.amount_minor = -t.amount_minor)
          OR (t.to_account = NEW.account_id AND NEW.amount_minor = t.amount_minor))) THEN
        RAISE EXCEPTION 'a posting must be a leg of its transfer' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$

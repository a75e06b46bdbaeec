-- PostgreSQL triggers of migration 4 (statements separated by a line holding only "/").
CREATE FUNCTION posbridge_post_transfer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    mismatched BIGINT;
BEGIN
    SELECT COUNT(*) INTO mismatched FROM accounts
        WHERE account_id IN (NEW.from_account, NEW.to_account) AND currency <> NEW.currency;
    IF mismatched > 0 THEN
        RAISE EXCEPTION 'transfer % mixes currencies', NEW.transfer_id USING ERRCODE = 'check_violation';
    END IF;
    -- A funding account's balance is what it issued, read from its postings: it stays 0 here.
    UPDATE accounts SET balance_minor = balance_minor - NEW.amount_minor
        WHERE account_id = NEW.from_account AND kind <> 'funding';
    UPDATE accounts SET balance_minor = balance_minor + NEW.amount_minor
        WHERE account_id = NEW.to_account AND kind <> 'funding';
    INSERT INTO postings (posting_id, order_id, account_id, amount_minor, currency, kind, created_at_ms, transfer_id)
        VALUES (NEW.transfer_id || '-d', NEW.order_id, NEW.from_account, -NEW.amount_minor, NEW.currency, NEW.kind, NEW.created_at_ms, NEW.transfer_id),
               (NEW.transfer_id || '-c', NEW.order_id, NEW.to_account, NEW.amount_minor, NEW.currency, NEW.kind, NEW.created_at_ms, NEW.transfer_id);
    RETURN NEW;
END $$
/
CREATE TRIGGER transfers_post AFTER INSERT ON transfers FOR EACH ROW EXECUTE FUNCTION posbridge_post_transfer()
/
CREATE FUNCTION posbridge_check_posting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'postings are never changed or deleted' USING ERRCODE = 'check_violation';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM transfers t WHERE t.transfer_id = NEW.transfer_id AND t.currency = NEW.currency
        AND ((t.from_account = NEW.account_id AND NEW.amount_minor = -t.amount_minor)
          OR (t.to_account = NEW.account_id AND NEW.amount_minor = t.amount_minor))) THEN
        RAISE EXCEPTION 'a posting must be a leg of its transfer' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$
/
CREATE TRIGGER postings_legs BEFORE INSERT OR UPDATE OR DELETE ON postings FOR EACH ROW EXECUTE FUNCTION posbridge_check_posting()

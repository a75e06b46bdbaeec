-- SQLite triggers of migration 4 (statements separated by a line holding only "/").
CREATE TRIGGER transfers_currency BEFORE INSERT ON transfers
WHEN EXISTS (SELECT 1 FROM accounts WHERE account_id IN (NEW.from_account, NEW.to_account) AND currency <> NEW.currency)
BEGIN
    SELECT RAISE(ABORT, 'transfer mixes currencies');
END
/
CREATE TRIGGER transfers_post AFTER INSERT ON transfers
BEGIN
    -- A funding account's balance is what it issued, read from its postings: it stays 0 here.
    UPDATE accounts SET balance_minor = balance_minor - NEW.amount_minor
        WHERE account_id = NEW.from_account AND kind <> 'funding';
    UPDATE accounts SET balance_minor = balance_minor + NEW.amount_minor
        WHERE account_id = NEW.to_account AND kind <> 'funding';
    INSERT INTO postings (posting_id, order_id, account_id, amount_minor, currency, kind, created_at_ms, transfer_id)
        VALUES (NEW.transfer_id || '-d', NEW.order_id, NEW.from_account, -NEW.amount_minor, NEW.currency, NEW.kind, NEW.created_at_ms, NEW.transfer_id),
               (NEW.transfer_id || '-c', NEW.order_id, NEW.to_account, NEW.amount_minor, NEW.currency, NEW.kind, NEW.created_at_ms, NEW.transfer_id);
END
/
CREATE TRIGGER postings_legs BEFORE INSERT ON postings
WHEN NOT EXISTS (SELECT 1 FROM transfers t WHERE t.transfer_id = NEW.transfer_id AND t.currency = NEW.currency
    AND ((t.from_account = NEW.account_id AND NEW.amount_minor = -t.amount_minor)
      OR (t.to_account = NEW.account_id AND NEW.amount_minor = t.amount_minor)))
BEGIN
    SELECT RAISE(ABORT, 'a posting must be a leg of its transfer');
END
/
CREATE TRIGGER postings_immutable_update BEFORE UPDATE ON postings
BEGIN
    SELECT RAISE(ABORT, 'postings are never changed or deleted');
END
/
CREATE TRIGGER postings_immutable_delete BEFORE DELETE ON postings
BEGIN
    SELECT RAISE(ABORT, 'postings are never changed or deleted');
END

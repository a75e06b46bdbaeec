-- PostgreSQL statements of migration 18: the two postings a transfer's own trigger writes cost
-- neither a call of the leg check nor a foreign-key check each (four checks per sale, each a
-- query or a function call of its own).
-- * The leg check (posbridge_check_posting) had returned at once for them (pg_trigger_depth()
--   > 1): a WHEN clause now skips its call for any posting inserted from inside a trigger; a
--   posting inserted by a statement of its own is still checked against its transfer, and an
--   update or delete of any posting is still refused, by a trigger of its own.
-- * The foreign key from a posting to its account repeated what is enforced already: a posting
--   is a leg of its transfer (by construction from the trigger, by the leg check otherwise),
--   whose two accounts the transfer's own foreign keys hold, and postings never change.
ALTER TABLE postings DROP CONSTRAINT IF EXISTS postings_account_id_fkey
/
DROP TRIGGER IF EXISTS postings_legs ON postings
/
CREATE TRIGGER postings_legs BEFORE INSERT ON postings FOR EACH ROW
    WHEN (pg_trigger_depth() < 1) EXECUTE FUNCTION posbridge_check_posting()
/
CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE ON postings FOR EACH ROW
    EXECUTE FUNCTION posbridge_check_posting()

-- PostgreSQL statements of migration 16: the check of an order's state change, made by the
-- database. The change is sent with the statements after it, before its answer is read (one
-- round trip fewer per state change); `SELECT posbridge_expect_moved((SELECT COUNT(*) FROM moved),
-- order_id, expected)` over the `UPDATE ... RETURNING` raises unless exactly one row changed,
-- which aborts the transaction: nothing sent with it commits.
CREATE FUNCTION posbridge_expect_moved(moved BIGINT, order_id TEXT, expected TEXT) RETURNS BIGINT
    LANGUAGE plpgsql AS $$
BEGIN
    IF moved IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION 'order % was not in state % (% rows changed): nothing is committed', order_id, expected, moved
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN moved;
END $$

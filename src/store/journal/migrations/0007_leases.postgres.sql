-- PostgreSQL statement of migration 7: retrieval reference numbers from a sequence.
CREATE SEQUENCE rrn MINVALUE 1 MAXVALUE 999999999999 CYCLE

-- PostgreSQL statement of migration 6.
CREATE SEQUENCE upstream_stan MINVALUE 1 MAXVALUE 999999 CYCLE

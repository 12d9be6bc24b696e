-- A least-privilege login for the relay: REPLICATION to open the slot and
-- stream, SELECT on the outbox (needed by the walsender's initial checks and by
-- a polling relay reading it). No other privilege. Idempotent.
--
-- Set its password yourself (never in a file that is committed):
--   ALTER ROLE outbox_relay PASSWORD '…';
-- and allow it in pg_hba.conf for the database, e.g.
--   host  app  outbox_relay  10.0.0.0/8  scram-sha-256
-- One line serves both of the relay's connections: a logical replication
-- connection (replication=database) matches a line naming its database, not
-- the "replication" keyword, which only physical standbys match.
-- `outbox-relay doctor` tries both connections and says what is missing.
-- A polling relay (outbox-relay poll) also needs UPDATE and DELETE on the
-- outbox; grant that only where polling is used.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outbox_relay') THEN
        CREATE ROLE outbox_relay WITH LOGIN REPLICATION;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO outbox_relay;
GRANT SELECT ON public.outbox TO outbox_relay;

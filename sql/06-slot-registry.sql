-- Where the relay records the slots it created or used, so that a missing slot
-- that existed before is reported as lost (dropped, or a failover to a server
-- that never had it) instead of being created again at the current position,
-- which would skip every event committed in between. The table is ordinary
-- data: it travels with physical replication to standbys. The relay creates it
-- itself when its role may; otherwise apply this file as an owner. Idempotent.
CREATE TABLE IF NOT EXISTS public.outbox_relay_slots (
    slot_name text NOT NULL,
    database text NOT NULL DEFAULT current_database(),
    system_identifier text NOT NULL,
    timeline int NOT NULL,
    created_lsn pg_lsn,
    created_at timestamptz NOT NULL DEFAULT now(),
    confirmed_lsn pg_lsn,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot_name, database));

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outbox_relay') THEN
        GRANT SELECT, INSERT, UPDATE ON public.outbox_relay_slots TO outbox_relay;
    END IF;
END
$$;

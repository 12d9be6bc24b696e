-- Only for the polling relay (outbox-relay poll); the log-tailing relay needs
-- none of this. Idempotent.
--
-- 1. An index on the claim order, so each poll reads the oldest rows without
--    sorting the table (the default --order-by is created_at).
CREATE INDEX IF NOT EXISTS outbox_created_at_idx ON public.outbox (created_at);

-- 2. The LISTEN/NOTIFY waker (outbox-relay poll --notify-channel outbox_relay):
--    one notification per inserting statement, delivered when its transaction
--    commits (never for a rolled-back one), so a poller wakes at once instead
--    of at its next interval. PostgreSQL folds identical notifications of one
--    transaction into one. Cost: committing a transaction that notified takes
--    a database-wide lock on the notification queue, which serializes those
--    commits; measure before using it at high write rates.
CREATE OR REPLACE FUNCTION public.outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_relay', '');
    RETURN NULL;
END
$$;

-- DROP + CREATE rather than CREATE OR REPLACE TRIGGER, which PostgreSQL 13 lacks.
DROP TRIGGER IF EXISTS outbox_notify ON public.outbox;
CREATE TRIGGER outbox_notify
    AFTER INSERT ON public.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.outbox_notify();

-- 3. The poller's role needs to remove (or mark) what it published:
--    GRANT DELETE ON public.outbox TO outbox_relay;
-- (or, with --mark-column published_at:
--    ALTER TABLE public.outbox ADD COLUMN IF NOT EXISTS published_at timestamptz;
--    GRANT UPDATE (published_at) ON public.outbox TO outbox_relay;)

-- The publication the relay subscribes to. It publishes inserts only, so
-- deletes of the insert-then-delete pattern, updates and truncates are not
-- even decoded by the walsender. Idempotent.
--
-- The name must match the relay's --publication (default outbox_pub).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'outbox_pub') THEN
        CREATE PUBLICATION outbox_pub FOR TABLE public.outbox WITH (publish = 'insert');
    END IF;
END
$$;

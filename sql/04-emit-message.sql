-- A table-less outbox: emit an event as a transactional logical decoding
-- message. The relay routes messages whose prefix is its --message-prefix
-- (default 'outbox') exactly like outbox rows. The message becomes part of the
-- calling transaction: it is published only if that transaction commits, and
-- it leaves no row behind. Idempotent.
--
--   SELECT outbox_emit('order', '42', 'OrderCreated', '{"total": 10}');
CREATE OR REPLACE FUNCTION public.outbox_emit(
    aggregatetype text,
    aggregateid   text,
    type          text,
    payload       jsonb,
    headers       jsonb DEFAULT NULL,
    id            uuid  DEFAULT gen_random_uuid(),
    prefix        text  DEFAULT 'outbox'
) RETURNS pg_lsn
LANGUAGE sql VOLATILE
AS $$
    SELECT pg_logical_emit_message(
        true,
        prefix,
        jsonb_build_object(
            'id', id,
            'aggregatetype', aggregatetype,
            'aggregateid', aggregateid,
            'type', type,
            'payload', payload,
            'headers', headers
        )::text
    );
$$;

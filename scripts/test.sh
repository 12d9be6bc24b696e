#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing, starts a
# throwaway PostgreSQL (wal_level=logical, 127.0.0.1, a free port, a low
# wal_sender_timeout so keepalive paths run) and a tansu broker, runs
# `swift test`, and stops what it started.
#
#   bash scripts/test.sh [--pg N] [swift test arguments…]   one version (default 15, Debian's)
#   bash scripts/test.sh --all-versions [swift test arguments…]   14, 15, 16, 17 and 18 in turn
#
# Versions other than 15 come from PyPI wheels (scripts/pg-versions.sh).
# Extra arguments go to `swift test` (e.g. --filter Router), which then runs
# every selected test one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

major=15
if [ "${1:-}" = "--all-versions" ]; then
  shift
  for v in 14 15 16 17 18; do
    echo "test.sh: ===== PostgreSQL $v =====" >&2
    bash "$0" --pg "$v" "$@"
  done
  exit 0
fi
if [ "${1:-}" = "--pg" ]; then
  major=$2
  shift 2
fi

need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
command -v psql >/dev/null || need_apt+=(postgresql-client-15)
pkg-config --exists libpq 2>/dev/null || need_apt+=(libpq-dev pkg-config)
pkg-config --exists rdkafka 2>/dev/null || need_apt+=(librdkafka-dev)
command -v kcat >/dev/null || need_apt+=(kcat)
pkg-config --exists libnats 2>/dev/null || need_apt+=(libnats-dev)
[ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
pkg-config --exists librabbitmq 2>/dev/null || need_apt+=(librabbitmq-dev)
pkg-config --exists libcurl 2>/dev/null || need_apt+=(libcurl4-openssl-dev)
pkg-config --exists libmosquitto 2>/dev/null || need_apt+=(libmosquitto-dev)
[ -f /usr/include/proton/connection_driver.h ] || need_apt+=(libqpid-proton11-dev)
[ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null || need_apt+=(mosquitto-clients)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
command -v promtool >/dev/null || need_apt+=(prometheus)  # promtool, for the alert rules' tests
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

source scripts/pg-versions.sh
pg_use "$major"
source scripts/pg-env.sh
source scripts/kafka-env.sh
kafka_setup
PG_WAL_SENDER_TIMEOUT=10s pg_start "logical_decoding_work_mem = 64kB"
kafka_start
# A RabbitMQ node starts Erlang's port mapper (epmd) as a daemon that outlives
# it: stop the ones that were not running before this script, so it leaves no
# process behind.
epmd_before=" $(pgrep -x epmd | tr '\n' ' ' || true) "
stop_new_epmd() {
  for pid in $(pgrep -x epmd); do
    case "$epmd_before" in *" $pid "*) ;; *) kill "$pid" 2>/dev/null || true ;; esac
  done
}
trap 'kafka_stop; pg_stop; stop_new_epmd' EXIT
echo "test.sh: PostgreSQL $major ($PG_BIN) on 127.0.0.1:$PGPORT (wal_level=logical); tansu (Kafka protocol) on $KAFKA_TEST_BROKERS; librdkafka runtime from $RDKAFKA_RUNTIME_DIR" >&2

# Formatting (.swift-format: 120 columns) is part of the test: `swift-format
# format -i -r -p Sources Tests bench fuzz Package.swift` fixes what this finds.
swift-format lint --strict -r -p Sources Tests bench fuzz Package.swift \
  || { echo "test.sh: swift-format found unformatted code (above); run: swift-format format -i -r -p Sources Tests bench fuzz Package.swift" >&2; exit 1; }
swift build --build-tests
export OUTBOX_TEST_PG KAFKA_TEST_BROKERS TANSU_BIN PG_BIN PG_LIB PG_MAJOR
export OUTBOX_RELAY_BIN="$PWD/.build/debug/outbox-relay"
# The destination suites (Kafka outage and sink, NATS, RabbitMQ, Redis, HTTP) do not
# depend on the PostgreSQL version: they run with the default one only (each
# starts its own servers on free loopback ports). OUTBOX_TEST_SINKS=1 runs them
# with another version too.
if [ "$major" = 15 ] || [ -n "${OUTBOX_TEST_SINKS:-}" ]; then
  export NATS_SERVER_BIN=/usr/sbin/nats-server
  export RABBITMQ_SERVER_BIN=/usr/lib/rabbitmq/bin/rabbitmq-server
  export REDIS_SERVER_BIN=/usr/bin/redis-server
  export MOSQUITTO_BIN=/usr/sbin/mosquitto
  # moto's server speaks the AWS protocols (SQS, SNS, STS, IAM) for the SQS and SNS tests.
  python3 -c "import moto.server" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check "moto[server]" >&2
  MOTO_SERVER_BIN=$(command -v moto_server)
  export MOTO_SERVER_BIN
  export OUTBOX_TEST_SINKS_ENABLED=1
else
  export OUTBOX_TEST_SINKS_ENABLED=0
fi
swift build --product outbox-relay
# The configuration reference is generated from the binary: CI fails when they disagree.
python3 scripts/reference.py --check
# The Helm chart, rendered with Go's text/template and validated against the
# Kubernetes schemas; the binary reads the config file it generates.
python3 scripts/helm-check.py
# Hard ceilings, so a hang can never eat CI's budget (suites have their own time limits).
if [ $# -gt 0 ]; then
  timeout -s KILL 1500 swift test --skip-build --no-parallel "$@"
  exit 0
fi
# The suites that time things (liveness, faults, versions) run one test at a
# time on the throwaway server. Then the destination suites, which start
# servers of their own and mostly wait (30 s outages, kill loops), run side by
# side, each in its own `swift test` process with a PostgreSQL of its own: a
# slot decodes all of its cluster's WAL, and the tests bound what may be
# confirmed by WAL positions, so writers of one suite must not move another's.
destination_suites='BrokerOutageTests|KafkaIntegrationTests|NATSSinkTests|RabbitMQSinkTests|RedisSinkTests|HTTPSinkTests|MQTTSinkTests|AMQP1SinkTests|AWSSinkTests'
timeout -s KILL 1200 swift test --skip-build --no-parallel --skip "$destination_suites"
[ "$OUTBOX_TEST_SINKS_ENABLED" = 1 ] || exit 0
logs=$(mktemp -d /tmp/outbox-relay-suites.XXXXXX)
pids=()
groups=(${destination_suites//|/ })
for suite in "${groups[@]}"; do
  (
    PG_WAL_SENDER_TIMEOUT=10s pg_start "logical_decoding_work_mem = 64kB"
    # The test bundle itself: `swift test` would wait for the others' lock on .build.
    NO_COLOR=1 timeout -s KILL 900 .build/debug/outbox-relayPackageTests.xctest --testing-library swift-testing \
      --no-parallel --filter "IntegrationTests.$suite/"
    grep -q "Test run with [1-9]" "$logs/$suite.log" || { echo "test.sh: no test of $suite ran" >&2; exit 1; }
  ) >"$logs/$suite.log" 2>&1 &
  pids+=($!)
done
failed=()
for i in "${!groups[@]}"; do
  wait "${pids[$i]}" || failed+=("${groups[$i]}")
done
for suite in "${groups[@]}"; do
  echo "test.sh: ===== $suite (own PostgreSQL) =====" >&2
  cat "$logs/$suite.log"
done
rm -rf "$logs"
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: failed: ${failed[*]}" >&2
  exit 1
fi

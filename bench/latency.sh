#!/usr/bin/env bash
# End-to-end latency, CDC against polling, measured side by side in one run.
#
# Starts a throwaway PostgreSQL 15 (wal_level=logical, pg_stat_statements),
# builds the release binaries, then for each cell (mode × rate × rows per
# transaction) starts a fresh local Kafka-protocol broker (tansu) and runs the real `outbox-relay`
# binary in its own process while bench/LatencyBench commits outbox
# transactions at a fixed rate and reads the topic back with a Kafka consumer,
# in one process with one clock. Writes bench/results/latency.md, the
# percentile CSV and bench/results/latency.png.
#
#   bash bench/latency.sh                    # the full matrix (about 15 minutes)
#   bash bench/latency.sh --scale 0.1        # a quick look (fewer events per cell)
#   bash bench/latency.sh --modes cdc,poll-10 --rates 1000 --sizes 1
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench/results}
swift build -c release --product outbox-relay >/dev/null
swift build -c release --product LatencyBench >/dev/null
source scripts/pg-env.sh
source scripts/kafka-env.sh
kafka_setup
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check matplotlib >&2
pg_start "shared_preload_libraries = 'pg_stat_statements'" "pg_stat_statements.track = all" "shared_buffers = 256MB" "max_connections = 100"
trap 'pg_stop' EXIT
mkdir -p "$OUT/logs"
rm -f "$OUT"/logs/*.log
export BENCH_MACHINE="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), PostgreSQL $(psql -X -At -c 'SHOW server_version'), tansu broker, librdkafka $(basename "$(readlink -f "$RDKAFKA_RUNTIME_DIR/librdkafka.so.1")" | sed 's/librdkafka-\([^.]*\).*/\1/') runtime, $(date -u +%Y-%m-%d)"
export BENCH_COMMAND="bash bench/latency.sh${*:+ $*}"
.build/release/LatencyBench --relay .build/release/outbox-relay --conninfo "$OUTBOX_TEST_PG" \
  --relay-conninfo "$OUTBOX_TEST_PG user=bench_relay" --tansu "$TANSU_BIN" --out "$OUT" "$@"
python3 bench/plot_latency.py "$OUT/latency-percentiles.csv" "$OUT/latency.png"
echo "wrote $OUT/latency.md and $OUT/latency.png" >&2

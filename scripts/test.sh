#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing, starts a
# throwaway PostgreSQL 15 (wal_level=logical, 127.0.0.1, a free port, a low
# wal_sender_timeout so keepalive paths run), runs `swift test`, and stops
# what it started. Extra arguments go to `swift test` (e.g. --filter Router).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
command -v psql >/dev/null || need_apt+=(postgresql-client-15)
pkg-config --exists libpq 2>/dev/null || need_apt+=(libpq-dev pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

source scripts/pg-env.sh
PG_WAL_SENDER_TIMEOUT=10s pg_start "logical_decoding_work_mem = 64kB"
echo "test.sh: PostgreSQL 15 on 127.0.0.1:$PGPORT (wal_level=logical)" >&2

swift build --build-tests
export OUTBOX_TEST_PG
export OUTBOX_RELAY_BIN="$PWD/.build/debug/outbox-relay"
swift build --product outbox-relay
swift test --skip-build "$@"

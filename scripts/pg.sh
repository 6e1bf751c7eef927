#!/usr/bin/env bash
# A throwaway PostgreSQL server, for the catalog's contract tests and for trying the catalog by
# hand against PostgreSQL. Uses Debian's postgresql package (scripts/setup.sh installs it).
#
#   scripts/pg.sh start DIR PORT   create a cluster in DIR/data unless there is one, start it on
#                                  127.0.0.1:PORT (socket in DIR), wait until it accepts
#                                  connections, and print its URL on stdout:
#                                  postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
#   scripts/pg.sh stop DIR         stop it (fast shutdown) and wait until it is gone; DIR stays
#
# Not for production: authentication is `trust` (it listens on 127.0.0.1 only), and fsync is off
# because the data is thrown away. As root, the server runs as the `postgres` user (initdb
# refuses root), so DIR is given to that user; DIR's parent must be traversable by it (/tmp is).
# Readiness is waited for by `pg_ctl -w` and checked with `pg_isready`, both bounded: no sleeps.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR PORT | stop DIR" >&2
  exit 2
}

bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then
    echo "$PG_BINDIR"
    return
  fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$found" ] && command -v initdb >/dev/null; then
    found=$(dirname "$(command -v initdb)")
  fi
  if [ -z "$found" ]; then
    echo "pg.sh: no PostgreSQL server binaries found: hint: run scripts/setup.sh (Debian package postgresql)" >&2
    exit 1
  fi
  echo "$found"
}

# Run a server command as the postgres user when we are root, as ourselves otherwise.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

[ $# -ge 2 ] || usage
command=$1
dir=$(realpath -m "$2")
BIN=$(bindir)

case "$command" in
start)
  [ $# -eq 3 ] || usage
  port=$3
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 || {
      cat "$dir/initdb.log" >&2
      exit 1
    }
  fi
  options="-k $dir -p $port -h 127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  if ! as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$options" start >/dev/null; then
    echo "pg.sh: the server did not start on port $port; its log:" >&2
    tail -n 20 "$dir/server.log" >&2 || true
    exit 1
  fi
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30 || {
    echo "pg.sh: the server started but does not accept connections on port $port" >&2
    exit 1
  }
  echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
  ;;
stop)
  [ $# -eq 2 ] || usage
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
  fi
  ;;
*)
  usage
  ;;
esac

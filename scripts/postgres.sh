#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL server for the tests and benchmarks: Debian's packages (installed if
# missing), a cluster in a temporary folder, listening on 127.0.0.1 only.
#
#   scripts/postgres.sh start DIR [PORT]   initialises DIR (if empty) and starts the server; prints its URL
#   scripts/postgres.sh stop DIR           stops the server (fast shutdown)
#   scripts/postgres.sh restart DIR        stops and starts it again on the same port (fault tests)
#
# The server runs as the `postgres` system user when run as root (PostgreSQL refuses to run as root), trusts
# local connections (it listens on loopback only and lives as long as the test run), and keeps fsync on.
set -euo pipefail

command=${1:?usage: postgres.sh start|stop|restart DIR [PORT]}
dir=${2:?usage: postgres.sh start|stop|restart DIR [PORT]}

find_bin() {
    local candidate
    for candidate in /usr/lib/postgresql/*/bin; do
        if [ -x "$candidate/pg_ctl" ]; then echo "$candidate"; return 0; fi
    done
    return 1
}

bin=$(find_bin || true)
if [ -z "$bin" ]; then
    if [ "$command" != start ]; then echo "postgres.sh: PostgreSQL is not installed" >&2; exit 1; fi
    echo "postgres.sh: installing PostgreSQL from Debian's packages" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bin=$(find_bin)
fi

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "$command" in
start)
    port=${3:-}
    if [ -z "$port" ]; then
        # A free loopback port, chosen by the kernel.
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    fi
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
    chmod 700 "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    echo "$port" >"$dir/port"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir/port"; fi
    # Loopback only; the socket goes in DIR, not in /var/run (which a temporary cluster does not own).
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c shared_buffers=128MB" start >&2 \
        || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || true
    fi
    ;;
restart)
    port=$(cat "$dir/port")
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 60 stop >&2 || true
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c shared_buffers=128MB" start >&2
    ;;
*)
    echo "postgres.sh: unknown command $command" >&2
    exit 2
    ;;
esac

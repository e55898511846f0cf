#!/usr/bin/env bash
# Starts or stops a throwaway Redis server for the tests and benchmarks: Debian's redis-server (installed if
# missing), listening on 127.0.0.1 only, with its files in DIR, nothing saved to disk, a password, and the
# bounded, least-recently-used memory Pargen's cache documents (maxmemory 256 MB, allkeys-lru).
#
#   scripts/redis.sh start DIR [PORT]   starts the server; prints its URL (redis://:PASSWORD@127.0.0.1:PORT/0)
#   scripts/redis.sh stop DIR           stops it
#   scripts/redis.sh restart DIR        stops and starts it again on the same port (fault tests); prints its URL
set -euo pipefail
source "$(dirname "$0")/process.sh"

command=${1:?usage: redis.sh start|stop|restart DIR [PORT]}
dir=${2:?usage: redis.sh start|stop|restart DIR [PORT]}

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$command" != start ]; then echo "redis.sh: redis-server is not installed" >&2; exit 1; fi
    echo "redis.sh: installing redis-server from Debian's packages" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
fi

start() {
    local port=$1
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" \
        --logfile "$dir/redis.log" --save "" --appendonly no --requirepass "$(cat "$dir/password")" \
        --maxmemory 256mb --maxmemory-policy allkeys-lru >&2
    for _ in $(seq 1 100); do
        if redis-cli -p "$port" -a "$(cat "$dir/password")" --no-auth-warning ping 2>/dev/null | grep -q PONG; then
            return 0
        fi
        sleep 0.05
    done
    echo "redis.sh: the server did not answer on port $port" >&2
    cat "$dir/redis.log" >&2 || true
    exit 1
}

stop() {
    if [ -f "$dir/redis.pid" ]; then
        local pid
        pid=$(cat "$dir/redis.pid")
        # SHUTDOWN, not a signal: a server started by a process that blocks SIGTERM (a test runner) inherits
        # the block and would ignore it. SIGKILL if it is still there after 5 s.
        redis-cli -p "$(cat "$dir/port")" -a "$(cat "$dir/password")" --no-auth-warning shutdown nosave >/dev/null 2>&1 || true
        wait_or_kill "$pid"
        rm -f "$dir/redis.pid"
    fi
    # A server whose pid file is gone or stale (a restart cut short) is still found by its port.
    if [ -f "$dir/port" ]; then
        pkill -9 -x -f "redis-server 127.0.0.1:$(cat "$dir/port")" 2>/dev/null || true
    fi
}

case "$command" in
start)
    port=${3:-}
    if [ -z "$port" ]; then
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    fi
    mkdir -p "$dir"
    echo "$port" >"$dir/port"
    [ -f "$dir/password" ] || python3 -c 'import secrets; print(secrets.token_hex(16))' >"$dir/password"
    start "$port"
    echo "redis://:$(cat "$dir/password")@127.0.0.1:$port/0"
    ;;
stop) stop ;;
restart)
    stop
    start "$(cat "$dir/port")"
    echo "redis://:$(cat "$dir/password")@127.0.0.1:$(cat "$dir/port")/0"
    ;;
*) echo "usage: redis.sh start|stop|restart DIR [PORT]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Starts or stops an S3-compatible server for the tests and benchmarks: moto's server (PyPI `moto[server]`),
# installed once into a virtual environment under ~/.cache/pargen, listening on 127.0.0.1 only.
#
#   scripts/s3.sh start DIR [PORT]   starts the server; prints its endpoint (http://127.0.0.1:PORT)
#   scripts/s3.sh stop DIR           stops it
set -euo pipefail
source "$(dirname "$0")/process.sh"

command=${1:?usage: s3.sh start|stop DIR [PORT]}
dir=${2:?usage: s3.sh start|stop DIR [PORT]}
venv=${PARGEN_MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/pargen/moto-venv}

case "$command" in
start)
    if [ ! -x "$venv/bin/moto_server" ]; then
        echo "s3.sh: installing moto[server] from PyPI into $venv" >&2
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
            python3 -m venv "$venv" >&2
        fi
        "$venv/bin/pip" install -q 'moto[server]>=5,<6' >&2
    fi
    port=${3:-}
    if [ -z "$port" ]; then
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    fi
    mkdir -p "$dir"
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    echo $! >"$dir/moto.pid"
    for _ in $(seq 1 200); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null; then
            echo "http://127.0.0.1:$port"
            exit 0
        fi
        sleep 0.1
    done
    echo "s3.sh: moto did not answer on port $port" >&2
    cat "$dir/moto.log" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/moto.pid" ]; then
        # SIGTERM, then SIGKILL if it is still there after 5 s.
        pid=$(cat "$dir/moto.pid")
        kill "$pid" 2>/dev/null || true
        wait_or_kill "$pid"
        rm -f "$dir/moto.pid"
    fi
    ;;
*) echo "usage: s3.sh start|stop DIR [PORT]" >&2; exit 2 ;;
esac

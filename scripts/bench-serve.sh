#!/usr/bin/env bash
# Load on the HTTP service: POST /v1/jobs on loopback with wrk, on the memory store and then on SQLite, with the
# engine running the jobs and as an API node alone (--no-work); reports requests/s and latency percentiles, and
# the server's resident memory when idle.
#
#   scripts/bench-serve.sh [SECONDS] [CONNECTIONS]
#
# Release build; wrk from Debian's packages (installed if missing). Binds 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-32}
command -v wrk >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
swift build -c release --product pargen >/dev/null
bin=.build/release/pargen
work=$(mktemp -d "${TMPDIR:-/tmp}/pargen-bench-serve.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("PARGEN_BENCH_KEY")
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/jobs", nil, '{"type":"audio","prompt":"Benchmark line ' .. n .. ' from thread ' .. tostring(wrk.thread) .. '","duration":2}')
end
LUA

run() {
    local name=$1; shift
    local log="$work/$name.log"
    "$bin" serve --port 0 --out "$work/$name" --print-key bench/load --no-key-limits --log-level error "$@" >"$log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 200); do grep -q "serving on" "$log" 2>/dev/null && break; sleep 0.05; done
    local url key
    url=$(grep -o 'http://[0-9.:]*' "$log" | head -1)
    key=$(grep '^key:' "$log" | cut -d' ' -f2)
    sleep 1
    local idle
    idle=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    PARGEN_BENCH_KEY=$key wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$work/post.lua" "$url" >"$work/$name.wrk"
    local rss
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ {print $2}' "$work/$name.wrk")
    p50=$(awk '$1=="50%" {print $2}' "$work/$name.wrk")
    p99=$(awk '$1=="99%" {print $2}' "$work/$name.wrk")
    errors=$(grep -E "Non-2xx|Socket errors" "$work/$name.wrk" | tr '\n' ' ' || true)
    printf '%-22s %10s req/s   p50 %-9s p99 %-9s idle RSS %6d kB   after %7d kB  %s\n' "$name" "$rps" "$p50" "$p99" "$idle" "$rss" "$errors"
}

echo "POST /v1/jobs, wrk -t2 -c$connections -d${seconds}s, $(nproc) cores"
run memory-api-only --memory --no-work
run memory --memory
run sqlite-api-only --no-work
run sqlite
# PostgreSQL: a throwaway cluster on loopback (scripts/postgres.sh), a fresh schema per run.
pgdir=$(mktemp -d "${TMPDIR:-/tmp}/pargen-bench-pg.XXXXXX")
url=$(bash scripts/postgres.sh start "$pgdir" 2>/dev/null | tail -1)
trap 'kill $(jobs -p) 2>/dev/null || true; bash scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1 || true; rm -rf "$work" "$pgdir"' EXIT
run postgres-api-only --postgres "$url" --postgres-schema bench_api --no-work
run postgres --postgres "$url" --postgres-schema bench_work

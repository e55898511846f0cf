#!/usr/bin/env bash
# Pipeline throughput and queued-job memory, each against a baseline in the same process.
# Usage: scripts/bench.sh [jobs=20000] [queued=100000]
#        scripts/bench.sh store [jobs=20000] [campaign=100000]   durable store throughput and resume time
#        scripts/bench.sh store-grouped [jobs=20000]   the SQLite lifecycle with 100 jobs in flight: leased 100 at a time, and
#                                   looked at and claimed one by one as the engine takes them (to profile)
#        scripts/bench.sh store-budgets [jobs=20000]   the SQLite, then the PostgreSQL, lifecycle with each reservation
#                                   within a global and a project budget, against none, at a tenth of the jobs and at
#                                   all of them (starts a throwaway PostgreSQL on loopback)
#        scripts/bench.sh matrix [lines=100000]   the scheduling matrix through the simulator, and the time to
#                                   simulate a campaign of that many lines
#        scripts/bench.sh workers [jobs=5000]   jobs/s through the durable lifecycle on PostgreSQL with 1, 2 and 3
#                                   workers (starts a throwaway server on loopback, see scripts/postgres.sh)
#        scripts/bench.sh cache [lines=1000]   shared cache lookup latency per tier, and a campaign with 90 % of its
#                                   lines in the shared tiers against none (starts Redis and moto on loopback)
#        scripts/bench.sh quota [window-seconds=60] [speech|video|mixed|all] [equal]   makespan against the quota
#                                   bound; "equal" gives every video task the same time (the bound is then reachable)
set -euo pipefail
cd "$(dirname "$0")/.."
# SwiftPM keeps the benchmark package's build plan when a file is added to the path dependency (this package), and
# then fails to find the new file's symbols: drop the plan so it is made again (nothing already built is lost).
rm -f Benchmarks/.build/release.yaml
swift build -c release --package-path Benchmarks --product PargenBench
if [ "${1:-}" = "quota" ]; then
    exec Benchmarks/.build/release/PargenBench quota "${2:-60}" "${3:-all}" ${4:-}
fi
if [ "${1:-}" = "workers" ]; then
    pgdir=$(mktemp -d "${TMPDIR:-/tmp}/pargen-bench-pg.XXXXXX")
    trap 'bash scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1; rm -rf "$pgdir"' EXIT
    url=$(bash scripts/postgres.sh start "$pgdir")
    Benchmarks/.build/release/PargenBench workers "$url" "${2:-5000}"
    exit 0
fi
if [ "${1:-}" = "cache" ]; then
    redisdir=$(mktemp -d "${TMPDIR:-/tmp}/pargen-bench-redis.XXXXXX")
    s3dir=$(mktemp -d "${TMPDIR:-/tmp}/pargen-bench-s3.XXXXXX")
    trap 'bash scripts/redis.sh stop "$redisdir" >/dev/null 2>&1; bash scripts/s3.sh stop "$s3dir" >/dev/null 2>&1; rm -rf "$redisdir" "$s3dir"' EXIT
    redis=$(bash scripts/redis.sh start "$redisdir")
    s3=$(bash scripts/s3.sh start "$s3dir")
    Benchmarks/.build/release/PargenBench cache "$redis" "$s3" "${2:-1000}"
    exit 0
fi
if [ "${1:-}" = "matrix" ]; then
    exec Benchmarks/.build/release/PargenBench matrix "${2:-100000}"
fi
if [ "${1:-}" = "store-grouped" ]; then
    exec Benchmarks/.build/release/PargenBench store-grouped "${2:-20000}"
fi
if [ "${1:-}" = "store-budgets" ]; then
    Benchmarks/.build/release/PargenBench store-budgets "${2:-20000}"
    pgdir=$(mktemp -d "${TMPDIR:-/tmp}/pargen-bench-pg.XXXXXX")
    trap 'bash scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1; rm -rf "$pgdir"' EXIT
    url=$(bash scripts/postgres.sh start "$pgdir")
    Benchmarks/.build/release/PargenBench store-budgets "${2:-20000}" "$url"
    exit 0
fi
if [ "${1:-}" = "store" ]; then
    exec Benchmarks/.build/release/PargenBench store "${2:-20000}" "${3:-100000}"
fi
exec Benchmarks/.build/release/PargenBench "${1:-20000}" "${2:-100000}"

#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: builds, then runs every test.
#
# SQLite is a file and the fake providers are started by the tests themselves on 127.0.0.1. PostgreSQL is a
# server: this script installs it from Debian's packages if it is missing, starts a throwaway cluster in a
# temporary folder on a loopback port (scripts/postgres.sh), names it to the tests in PARGEN_TEST_POSTGRES_URL,
# and stops it when the tests end, pass or fail.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v swift >/dev/null 2>&1; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi
# Debian packages the build and tests need: SQLite's headers (GRDB links the system SQLite), zlib's
# (ZIPFoundation reads Azure's batch results), pkg-config (which finds zlib), coreutils' sha256sum (the
# end-to-end tests check artifact hashes with an implementation independent of Pargen's), and Chromium.
missing=()
dpkg -s libsqlite3-dev >/dev/null 2>&1 || missing+=(libsqlite3-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v sha256sum >/dev/null 2>&1 || missing+=(coreutils)
# Headless Chromium loads the service's dashboard in the browser test (scripts/dashboard_check.py drives it).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

swift build --build-tests

pgdir=$(mktemp -d "${TMPDIR:-/tmp}/pargen-pg.XXXXXX")
redisdir=$(mktemp -d "${TMPDIR:-/tmp}/pargen-redis.XXXXXX")
s3dir=$(mktemp -d "${TMPDIR:-/tmp}/pargen-s3.XXXXXX")
stop_servers() {
    bash scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1 || true
    bash scripts/redis.sh stop "$redisdir" >/dev/null 2>&1 || true
    bash scripts/s3.sh stop "$s3dir" >/dev/null 2>&1 || true
    rm -rf "$pgdir" "$redisdir" "$s3dir"
}
trap stop_servers EXIT
PARGEN_TEST_POSTGRES_URL=$(bash scripts/postgres.sh start "$pgdir")
export PARGEN_TEST_POSTGRES_URL
export PARGEN_TEST_POSTGRES_DIR="$pgdir"
echo "PostgreSQL for the tests: $PARGEN_TEST_POSTGRES_URL"
# The shared cache tiers: redis-server from Debian's packages and moto's S3-compatible server from PyPI (in a
# virtual environment under ~/.cache/pargen), both on loopback, both stopped at the end.
PARGEN_TEST_REDIS_URL=$(bash scripts/redis.sh start "$redisdir")
export PARGEN_TEST_REDIS_URL
export PARGEN_TEST_REDIS_DIR="$redisdir"
PARGEN_TEST_S3_URL=$(bash scripts/s3.sh start "$s3dir")
export PARGEN_TEST_S3_URL
echo "Redis for the tests: redis://:***@127.0.0.1:$(cat "$redisdir/port")/0; S3 for the tests: $PARGEN_TEST_S3_URL"
log="${TMPDIR:-/tmp}/pargen-test.log"
# Every suite in parallel, except the measurements that other work would confound (resident memory, real-time
# makespans): SoloTests runs alone afterwards. At most 24 tests run at once: with all 255 at once on 2 cores a
# test's tasks waited up to a minute for a thread, and calls that a test expects answered within seconds (a
# fake's 0.02 s answer under an 8 s time-out) timed out. The run takes as long either way (135 s and 137 s).
export SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=${SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH:-24}
set +e
swift test --skip-build --parallel --skip SoloTests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
swift test --skip-build --filter SoloTests 2>&1 | tee -a "$log"
solo=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ] || [ "$solo" -ne 0 ]; then exit 1; fi

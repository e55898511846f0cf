#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: builds, then runs every test.
#
# The core suite needs no servers. The PostgreSQL and Redis integration suites arrive with the
# issues that add those backends; this script will then install them from Debian's packages and
# start them on 127.0.0.1 in a temporary directory before `swift test`, and stop them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v swift >/dev/null 2>&1; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi
# The end-to-end tests hash files with coreutils' sha256sum, an implementation independent of Pargen's.
command -v sha256sum >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq coreutils; }

swift build --build-tests
swift test --skip-build --parallel 2>&1 | tee "${TMPDIR:-/tmp}/pargen-test.log"
status=${PIPESTATUS[0]}
exit "$status"

#!/usr/bin/env bash
# Pipeline throughput and queued-job memory, each against a baseline in the same process.
# Usage: scripts/bench.sh [jobs=20000] [queued=100000]
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --package-path Benchmarks --product PargenBench
exec Benchmarks/.build/release/PargenBench "${1:-20000}" "${2:-100000}"

#!/usr/bin/env bash
# Runs one of Pargen's fuzz targets under libFuzzer for as long as asked:
#
#   scripts/fuzz.sh campaign|configuration|answers [SECONDS] [RUNS]
#
# SECONDS (default 60) bounds the time, RUNS (default: no bound) the inputs. The seed corpus is
# Fuzz/Corpus/TARGET and the dictionary Fuzz/Dictionaries/TARGET.dict; new inputs libFuzzer finds go to a
# temporary folder, and a crashing input is written to Fuzz/Crashes/TARGET/, where the test suite
# (FuzzTests) replays it from then on. The final line gives the number of inputs run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v swift >/dev/null 2>&1; then export PATH="/opt/swift/usr/bin:$PATH"; fi
target=${1:?usage: scripts/fuzz.sh campaign|configuration|answers [SECONDS] [RUNS]}
seconds=${2:-60}
runs=${3:--1}
case "$target" in
    campaign) product=FuzzCampaign ;;
    configuration) product=FuzzConfiguration ;;
    answers) product=FuzzAnswers ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
esac
# libFuzzer instruments every module (Pargen's included); gold cannot link the result, lld can. The driver
# looks libFuzzer up at run time (the same library links into the tests without it), so the build keeps and
# exports it.
swift build -c release --package-path Fuzz --product "$product" \
    -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library -Xswiftc -use-ld=lld \
    -Xlinker -u -Xlinker LLVMFuzzerRunDriver -Xlinker --export-dynamic >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "Fuzz/Crashes/$target"
SWIFT_BACKTRACE=enable=no "Fuzz/.build/release/$product" "$work" "Fuzz/Corpus/$target" \
    -dict="Fuzz/Dictionaries/$target.dict" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
    -max_total_time="$seconds" -runs="$runs" -artifact_prefix="Fuzz/Crashes/$target/" -print_final_stats=1

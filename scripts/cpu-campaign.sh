#!/usr/bin/env bash
# CPU time of `pargen run` (release build) for a 660-line speech-and-video campaign against two fake providers
# (OpenAI and MiniMax protocols on 127.0.0.1), each in its own process, so that the figure is pargen's alone.
# Prints pargen's wall time and user + system CPU seconds over RUNS runs. Everything stops by itself.
# Usage: scripts/cpu-campaign.sh [runs=3] [speech=600] [videos=60]
#        PARGEN_BIN=/path/to/pargen scripts/cpu-campaign.sh   another build of pargen (an older one, to compare;
#                                   PARGEN_NO_EXPECTED=1 leaves out expectedTaskSeconds, which older builds refuse)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
speech=${2:-600}
videos=${3:-60}
if [ -n "${PARGEN_BIN:-}" ]; then
    pargen=$PARGEN_BIN
else
    swift build -c release --product pargen >/dev/null
    pargen=.build/release/pargen
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
for wire in openai minimax; do
    # 600 submissions per 10 s window and 10 video slots: the campaign takes a few windows, not minutes.
    "$pargen" fake-provider --protocol "$wire" --port "$port" --api-key "key-$wire" --rpm 600 --window 10 \
        --concurrent 10 --task-seconds 2-5 --lifetime 900 >"$work/$wire.out" 2>&1 &
    eval "port_$wire=$port"
    port=$((port + 1))
done
sleep 2
expected="expectedTaskSeconds: 3.5
    "
[ -n "${PARGEN_NO_EXPECTED:-}" ] && expected=""
cat >"$work/pargen.yaml" <<YAML
providers:
  openai:
    baseURL: http://127.0.0.1:$port_openai
    apiKeyEnv: FAKE_OPENAI_KEY
    requestsPerMinute: 600
    quotaWindowSeconds: 10
    concurrentTasks: 10
    ${expected}pollIntervalSeconds: 0.5
  minimax:
    baseURL: http://127.0.0.1:$port_minimax
    apiKeyEnv: FAKE_MINIMAX_KEY
    requestsPerMinute: 600
    quotaWindowSeconds: 10
    concurrentTasks: 10
    ${expected}pollIntervalSeconds: 0.5
rateLimits:
  enabled: false
YAML
python3 - "$speech" "$videos" >"$work/campaign.jsonl" <<'PY'
import json, sys
speech, videos = int(sys.argv[1]), int(sys.argv[2])
for i in range(speech):
    print(json.dumps({"type": "audio", "prompt": f"narration line {i}", "user": f"u{i % 7}"}))
for i in range(videos):
    wire = ["openai", "minimax"][i % 2]
    print(json.dumps({"type": "video", "prompt": f"scene {i}", "duration": {"openai": 4, "minimax": 6}[wire],
                      "resolution": "720p", "provider": wire, "user": f"u{i % 7}"}))
PY
for run in $(seq 1 "$runs"); do
    FAKE_OPENAI_KEY=key-openai FAKE_MINIMAX_KEY=key-minimax /usr/bin/time -f "run $run: %e s wall, %U s user + %S s system" \
        "$pargen" run "$work/campaign.jsonl" --config "$work/pargen.yaml" --out "$work/out-$run" --no-progress \
        2>&1 >"$work/run-$run.out" | tail -1
    grep -E "^total:" "$work/run-$run.out" || true
done

#!/usr/bin/env bash
# A campaign against three fake providers (OpenAI, MiniMax, Runway protocols on 127.0.0.1) that fail 10 % of
# their video tasks with their own internal-failure codes and answer 5 % of submissions with a server error.
# Prints pargen's summary and the counts from the fakes' own logs. Everything stops by itself.
# Usage: scripts/failing-tasks.sh [lines=450] [task-failure-rate=0.1] [error-rate=0.05]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-450}
failure=${2:-0.1}
errors=${3:-0.05}
swift build --product pargen >/dev/null
pargen=.build/debug/pargen
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
for wire in openai minimax runway; do
    "$pargen" fake-provider --protocol "$wire" --port "$port" --api-key "key-$wire" --task-seconds 0.5-1.5 \
        --task-failure-rate "$failure" --error-rate "$errors" --lifetime 900 --log "$work/$wire.jsonl" \
        >"$work/$wire.out" 2>&1 &
    eval "port_$wire=$port"
    port=$((port + 1))
done
sleep 2
cat >"$work/pargen.yaml" <<YAML
providers:
  openai:
    baseURL: http://127.0.0.1:$port_openai
    apiKeyEnv: FAKE_OPENAI_KEY
    pollIntervalSeconds: 0.2
  minimax:
    baseURL: http://127.0.0.1:$port_minimax
    apiKeyEnv: FAKE_MINIMAX_KEY
    pollIntervalSeconds: 0.2
  runway:
    baseURL: http://127.0.0.1:$port_runway
    apiKeyEnv: FAKE_RUNWAY_KEY
    pollIntervalSeconds: 0.2
rateLimits:
  perUserRequestsPerMinute: 100000
  tokenBucketCapacity: 100000
  perProjectRequestsPerMinute: 100000
  maxBurst: 100000
YAML
python3 - "$lines" >"$work/campaign.jsonl" <<'PY'
import json, sys
n = int(sys.argv[1])
for i in range(n):
    kind = i % 3
    if kind == 0:
        print(json.dumps({"type": "audio", "prompt": f"narration line {i}", "provider": ["openai", "minimax"][i % 2]}))
    else:
        wire = ["openai", "minimax", "runway"][(i // 3) % 3]
        seconds = {"openai": 4, "minimax": 6, "runway": 5}[wire]
        print(json.dumps({"type": "video", "prompt": f"scene {i}", "duration": seconds, "resolution": "720p", "provider": wire, "user": f"u{i % 7}"}))
PY
start=$(date +%s.%N)
FAKE_OPENAI_KEY=key-openai FAKE_MINIMAX_KEY=key-minimax FAKE_RUNWAY_KEY=key-runway \
    "$pargen" run "$work/campaign.jsonl" --config "$work/pargen.yaml" --out "$work/out" --no-progress \
    | sed -n '/^provider/,$p' || true
end=$(date +%s.%N)
python3 - "$work" "$start" "$end" <<'PY'
import json, sys, os, collections
work, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = [json.loads(l) for l in open(os.path.join(work, "out", "manifest.jsonl"))]
status = collections.Counter(r["status"] for r in rows)
retried = [r for r in rows if r.get("tasks", 0) > 1]
print(f"\nmanifest: {dict(status)}; lines tried again on a new task: {len(retried)}; "
      f"tasks used: {sum(r.get('tasks', 0) for r in rows)}; wall time {end - start:.1f} s")
for wire in ["openai", "minimax", "runway"]:
    log = [json.loads(l) for l in open(os.path.join(work, f"{wire}.jsonl"))]
    accepted = [e for e in log if e["accepted"]]
    keys = collections.Counter(e.get("key") for e in accepted)
    jobs = collections.Counter((e.get("key") or "?").split(":")[0] for e in accepted)
    print(f"{wire}: {len(log)} submissions, {len(accepted)} accepted, "
          f"same key accepted twice: {sum(1 for k, c in keys.items() if c > 1)}, jobs with more than one accepted task: {sum(1 for j, c in jobs.items() if c > 1)}")
PY

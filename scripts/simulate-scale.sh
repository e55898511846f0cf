#!/usr/bin/env bash
# Times `pargen simulate` on a 100,000-line campaign whose videos only one provider takes (the example's
# configuration: MiniMax's five slots set the makespan), once with one draw of the call times and once with the
# default eleven. Usage: PARGEN_BIN=.build/release/pargen scripts/simulate-scale.sh [LINES]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${PARGEN_BIN:-.build/release/pargen}
lines=${1:-100000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$lines" "$work/campaign.jsonl" <<'PY'
import json, sys
lines, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(lines):
        if i % 10 == 0:
            f.write(json.dumps({"type": "video", "prompt": f"clip {i}", "duration": 4, "user": f"u{i % 50}"}) + "\n")
        else:
            f.write(json.dumps({"type": "audio", "prompt": f"line {i}", "user": f"u{i % 50}"}) + "\n")
PY
for draws in 1 11; do
    start=$(date +%s%N)
    "$bin" simulate "$work/campaign.jsonl" --config examples/simulate/pargen.yaml --task-seconds video=20..60 \
        --draws "$draws" > "$work/out.txt"
    end=$(date +%s%N)
    sed -n 1,3p "$work/out.txt"
    echo "draws $draws: $(( (end - start) / 1000000 )) ms wall"
done

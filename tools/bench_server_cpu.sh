#!/usr/bin/env bash
# tools/bench_server_cpu.sh - what the gRPC layer costs per streamed token
# and per request, apart from the engine: `lmserve serve` counts the CPU
# time of every thread but the engine's (lmserve_server_cpu_seconds on
# /metrics); two `lmserve-client load` runs that differ only in output
# length separate the two costs (cpu = requests x a + tokens x b).
#
#   tools/bench_server_cpu.sh [MODEL_DIR] [CONCURRENCY]
#   (default models/fixtures/qwen3-bf16, 64; LMSERVE_BIN_DIR for binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
bindir=${LMSERVE_BIN_DIR:-bin}
model=${1:-models/fixtures/qwen3-bf16}
conc=${2:-64}
reqs=$((conc * 4))
py=/usr/bin/python3
free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
mport=$(free_port)
log=$(mktemp)
"$bindir"/lmserve serve --model "$model" --port "$port" --metrics-port "$mport" \
  --log-level warn >"$log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 600); do
  curl -sf "localhost:$mport/metrics" >/dev/null 2>&1 && break
  sleep 0.1
done
cpu() { curl -sf "localhost:$mport/metrics" | awk '/^lmserve_server_cpu_seconds[{ ]/{print $NF}'; }
load() {
  "$bindir"/lmserve-client load --server "127.0.0.1:$port" --concurrency "$conc" \
    --requests "$reqs" --input-tokens 32 --output-tokens "$1" --json |
    $py -c 'import json,sys; d=json.load(sys.stdin); print(d["output_tok_per_s"])'
}
load 8 >/dev/null # warm-up
echo "# $(date -u +%Y-%m-%dT%H:%MZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"
echo "# model $model, concurrency $conc, $reqs requests of 32 prompt tokens; $(nproc) CPUs"
for round in 1 2 3; do
  c0=$(cpu)
  t8=$(load 8)
  c1=$(cpu)
  t64=$(load 64)
  c2=$(cpu)
  $py - "$c0" "$c1" "$c2" "$reqs" "$t8" "$t64" "$round" <<'PY'
import sys
c0, c1, c2, reqs, t8, t64 = (float(x) for x in sys.argv[1:7])
short, long_ = c1 - c0, c2 - c1  # seconds for reqs x 8 and reqs x 64 tokens
b = (long_ - short) / (reqs * 56)  # per token
a = (short - reqs * 8 * b) / reqs  # per request
print(f"round {sys.argv[7]}: {b * 1e6:6.1f} us/token  {a * 1e6:7.1f} us/request"
      f"  (server cpu {short:.3f} s and {long_:.3f} s; {t8:.0f} and {t64:.0f} tok/s)")
PY
done

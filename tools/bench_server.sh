#!/usr/bin/env bash
# tools/bench_server.sh - the gRPC server end to end against the engine in
# process, on the same workload: `lmserve-client load` streaming from
# `lmserve serve` and `lmserve bench` (no gRPC), random token-id prompts,
# greedy, ignore_eos (so both produce exactly requests x output tokens), at
# concurrency 1, 8 and 64, on the tiny fixture model and the benchmark
# model. Prints output tok/s of both, their ratio, the client's CPU use
# (it shares this machine's cores with the server) and the server's CPU
# per streamed token outside the engine thread.
#
#   tools/bench_server.sh [tiny|bench|8b]... (default: tiny bench)
#   LMSERVE_BIN_DIR=build/opt ...            binaries from elsewhere than bin/
#   LMSERVE_BACKEND=cuda ...                 the backend of both (default cpu)
# 8b is the GPU workload: the Llama-3.1-8B-shaped model at $LMSERVE_8B,
# 512-token prompts, 256-token outputs, concurrency 1, 16 and 64.
set -euo pipefail
cd "$(dirname "$0")/.."
bindir=${LMSERVE_BIN_DIR:-bin}
[ -x "$bindir"/lmserve-client ] || tools/setup.sh
py=/usr/bin/python3
[ -x $py ] || py=python3 # machines without Debian's Python (the GPU ones)
backend=${LMSERVE_BACKEND:-cpu}
# On a GPU the server and the in-process benchmark hold the model and a KV
# pool on one device at once: the server takes 45 % of its memory, and the
# benchmark what is left of 90 %.
gpu_share=()
[ "$backend" = cuda ] && gpu_share=(--gpu-memory-utilization 0.45)
what=${*:-tiny bench}
tmp=$(mktemp -d)
server_pid=
trap '[ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# CPU seconds of the server's threads: "engine_s serving_s". The engine is
# lm-engine and its compute workers (still named after the process); the
# serving cost is everything else: queue threads (lm-cq-N), gRPC's own
# threads, metrics and main.
thread_cpu() {
  local tck
  tck=$(getconf CLK_TCK)
  for t in /proc/"$1"/task/*; do
    printf '%s %s\n' "$(cat "$t/comm")" "$(cut -d')' -f2 "$t/stat" | awk '{print $12 + $13}')"
  done | awk -v tck="$tck" '/^(lm-engine|lmserve) / {e += $NF; next} {o += $NF} END {printf "%.3f %.3f\n", e / tck, o / tck}'
}

commit=$(git rev-parse --short HEAD 2>/dev/null || cat "$bindir"/COMMIT 2>/dev/null || echo unknown)
git diff --quiet 2>/dev/null || commit=$commit-dirty
echo "# $(date -u +%Y-%m-%dT%H:%MZ) commit $commit, backend $backend"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs"
printf '%-6s %5s %5s %5s %6s %10s %10s %6s %9s %10s %10s\n' model conc reqs in out \
  "e2e tok/s" "inproc" ratio "client%" "srv us/tok" "srv us/req"
for m in $what; do
  case $m in
  tiny) model=models/fixtures/qwen3-bf16 in=128 out=64 concs="1 8 64" ;;
  8b) model=${LMSERVE_8B:-build/gpu-fixtures/llama31-8b} in=512 out=256 concs="1 16 64" ;;
  bench)
    model=models/bench in=128 out=32 concs="1 8 64"
    [ -f models/bench/model.safetensors ] || $py tools/make_model.py --out models/bench --size bench
    ;;
  *)
    echo "unknown model '$m' (tiny, bench, 8b)" >&2
    exit 2
    ;;
  esac
  port=$(free_port)
  "$bindir"/lmserve serve --backend "$backend" "${gpu_share[@]}" --model "$model" --port "$port" \
    --metrics-port "$(free_port)" \
    --log-level warn >"$tmp/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    "$bindir"/lmserve-client generate --server "127.0.0.1:$port" --prompt hi --max-tokens 1 \
      >/dev/null 2>&1 && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "bench_server: lmserve serve exited:" >&2
      cat "$tmp/server.log" >&2
      server_pid=
      exit 1
    fi
    sleep 0.2
  done
  # in process first (the server is idle): `lmserve bench --only fixed`
  # runs c requests started together at c = 1, 8, 32, 64 (the GPU: 1, 16, 64, 256)
  "$bindir"/lmserve bench --backend "$backend" --model "$model" --only fixed --prompt-len "$in" --output-len "$out" \
    --long-len 2048 --prefix-len 1024 --json >"$tmp/bench.json" 2>"$tmp/bench.err" || cat "$tmp/bench.err" >&2
  for c in $concs; do
    before=$(thread_cpu "$server_pid")
    "$bindir"/lmserve-client load --server "127.0.0.1:$port" --concurrency "$c" --requests "$c" \
      --input-tokens "$in" --output-tokens "$out" --progress 0 --json >"$tmp/load.json"
    after=$(thread_cpu "$server_pid")
    $py - "$m" "$c" "$in" "$out" "$tmp/load.json" "$tmp/bench.json" "$before" "$after" <<'PY'
import json, sys
m, c, i, o, lf, bf, before, after = sys.argv[1:]
load = json.load(open(lf))
bench = {}
for line in open(bf):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("workload") == "fixed" and r.get("concurrency") == int(c):
        bench = r
e2e = load["output_tok_per_s"]
inproc = bench.get("output_tok_s", 0)
ratio = "%.3f" % (e2e / inproc) if inproc else "-"
other = float(after.split()[1]) - float(before.split()[1])
toks, reqs = max(load["output_tokens"], 1), max(load["requests"], 1)
client = 100 * load["client_cpu_s"] / load["duration_s"]
print("%-6s %5s %5s %5s %6s %10.1f %10s %6s %8.1f%% %10.1f %10.1f" % (
    m, c, load["requests"], i, o, e2e, "%.1f" % inproc if inproc else "-", ratio, client,
    other / toks * 1e6, other / reqs * 1e6))
if bench and bench.get("output_tokens") != load["output_tokens"]:
    print("  note: token totals differ: server %d, in-process %s" % (
        load["output_tokens"], bench.get("output_tokens")))
PY
  done
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=
done

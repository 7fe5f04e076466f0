#!/usr/bin/env bash
# tools/bench.sh - the CPU benchmarks recorded in docs/BENCHMARKS.md, after
# tools/setup.sh: single-sequence prefill and decode of the Qwen3-0.6B-shaped
# benchmark model against this machine's read bandwidth and FMA peak, and
# tokenizer encoding speed next to the official library, and the engine's
# serving benchmark (`lmserve bench`: throughput, TTFT, inter-token latency
# and its gates). The benchmark model (1.2 GB, random weights) is made on
# first use in models/bench.
#
#   tools/bench.sh [decode|tokenizer|engine]...   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/opt/decode_bench ] || tools/setup.sh
what=${*:-decode tokenizer engine}
bench_model() {
  if [ ! -f models/bench/model.safetensors ]; then
    /usr/bin/python3 tools/make_model.py --out models/bench --size bench
  fi
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs"
for w in $what; do
  case $w in
  decode)
    bench_model
    build/opt/decode_bench --model models/bench --prompt 512 --decode 128
    ;;
  tokenizer)
    tests/tokenizer_bench.sh build/opt/tokenizer_bench node_modules qwen3 llama3 llama2
    ;;
  engine)
    bench_model
    bin/lmserve bench --model models/bench
    ;;
  *)
    echo "unknown benchmark '$w' (decode, tokenizer, engine)" >&2
    exit 2
    ;;
  esac
done

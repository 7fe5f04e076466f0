#!/usr/bin/env bash
# fuzz_run.sh - builds the libFuzzer targets and runs each on a copy of its
# committed corpus (the repo is never written). Fails on any finding.
#   tests/fuzz_run.sh [seconds per target, default 30]
set -euo pipefail

secs="${1:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cc="${CC:-clang-14}"
work="$(mktemp -d "${TMPDIR:-/tmp}/lm_fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

srcs=(engine/safetensors.c engine/model.c engine/json.c engine/lm.c)
# the request decoder needs the protobuf-c code of the API
gen="$work/gen"
mkdir -p "$gen"
protoc-c --c_out="$gen" -I"$root/proto" -I/usr/include "$root/proto/lmserve/v1/lmserve.proto" \
  google/protobuf/struct.proto
status=0
# the tokenizer and chat targets load the npm packages' tokenizer.json and
# tokenizer_config.json files, and tests/chat_templates/
export LMSERVE_NODE_MODULES="${LMSERVE_NODE_MODULES:-$root/node_modules}" LMSERVE_SRC="$root"
for target in safetensors config request tokenizer chat tokenizer_json; do
  bin="$work/fuzz_$target"
  extra=()
  max_len=4096
  corpus="$root/tests/fuzz/corpus/$target"
  if [ "$target" = request ]; then
    extra=(server/codec.c "$gen/lmserve/v1/lmserve.pb-c.c" "$gen/google/protobuf/struct.pb-c.c"
      -I"$gen" -lprotobuf-c)
    corpus="$root/tests/corpus/request"
  elif [ "$target" = tokenizer ]; then
    extra=(engine/tok_*.c engine/tokenizer.c engine/output.c -lpcre2-8 -lutf8proc)
  elif [ "$target" = chat ]; then
    extra=(engine/tok_*.c engine/tokenizer.c engine/chat.c engine/jinja_*.c -lpcre2-8 -lutf8proc)
  elif [ "$target" = tokenizer_json ]; then
    extra=(engine/tok_*.c engine/tokenizer.c -lpcre2-8 -lutf8proc)
    max_len=32768 # its seeds are real tokenizer.json files cut to a few hundred tokens
  fi
  (cd "$root" && "$cc" -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$root" "tests/fuzz_$target.c" "${srcs[@]}" "${extra[@]}" -lm -o "$bin")
  mkdir -p "$work/corpus_$target" "$work/artifacts_$target"
  cp "$corpus/"* "$work/corpus_$target/"
  log="$work/$target.log"
  if (cd "$work" && ASAN_OPTIONS=detect_leaks=1 "$bin" -max_total_time="$secs" -max_len="$max_len" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts_$target/" "$work/corpus_$target" >"$log" 2>&1); then
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    cov="$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 || true)"
    echo "fuzz_$target: ok, ${execs:-?} execs in ${secs}s, ${cov:-cov: ?}"
  else
    status=1
    echo "fuzz_$target: FAILED (see below)"
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -20 || true
    tail -40 "$log"
    # keep the crashing inputs where CI can pick them up
    mkdir -p "${FUZZ_ARTIFACTS:-/tmp}/lm_fuzz_artifacts_$target"
    cp "$work/artifacts_$target/"* "${FUZZ_ARTIFACTS:-/tmp}/lm_fuzz_artifacts_$target/" 2>/dev/null || true
  fi
done
exit "$status"

#!/bin/bash
# forward_compare.sh - check lmserve's forward pass against the float64 torch
# reference on every fixture model under a root directory.
#
# Usage:
#   tests/forward_compare.sh FORWARD_DUMP FIXTURE_ROOT [GREEDY_STEPS [NAME_GLOB [DUMP_FLAG...]]]
#   tests/forward_compare.sh --self-test FIXTURE_ROOT [GREEDY_STEPS [NAME_GLOB]]
# FIXTURE_ROOT holds model directories (each with a config.json), e.g. from
#   /usr/bin/python3 tools/make_model.py --all /tmp/fixtures
# For each model it writes prompts of 1, 7, 64 and 300 tokens, runs
#   FORWARD_DUMP        --model DIR --prompts P --greedy N --out OURS.json
#   tests/torch_ref.py  --model DIR --prompts P --greedy N --out REF.json
# (with --bf16-matmul-inputs and --bf16-kv-cache where OURS.json says
# lmserve rounds matmul inputs or holds K/V in bf16)
# and tests/forward_compare.py check (one line per prompt). --self-test puts
# torch_ref.py --f32-kv-cache (float32, token by token) in forward_dump's
# place, to check the harness itself. GREEDY_STEPS defaults to 24; NAME_GLOB
# (default *) picks the model directories; DUMP_FLAGs go to FORWARD_DUMP
# (e.g. --kv-cache-dtype f32).
# Exits non-zero if any model fails. Work files go to a temporary directory.
set -u

if [ $# -lt 2 ]; then
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
dump=$1
root=$2
steps=${3:-24}
glob=${4:-*}
shift $(($# < 4 ? $# : 4))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

status=0
found=0
for dir in "$root"/$glob/; do
  [ -f "$dir/config.json" ] || continue
  found=1
  name=$(basename "$dir")
  prompts=$work/$name.prompts.json
  ref=$work/$name.ref.json
  ours=$work/$name.ours.json
  if ! "$py" "$here/forward_compare.py" prompts --model "$dir" --out "$prompts"; then
    echo "FAIL $name: cannot write prompts"
    status=1
    continue
  fi
  if [ "$dump" = --self-test ]; then
    "$py" "$here/torch_ref.py" --f32-kv-cache --model "$dir" --prompts "$prompts" --greedy "$steps" --out "$ours"
  else
    "$dump" --model "$dir" --prompts "$prompts" --greedy "$steps" --out "$ours" "$@"
  fi || { echo "FAIL $name: $dump exited with status $?"; status=1; continue; }
  # the reference rounds what lmserve rounds (forward_dump says what)
  round=()
  grep -q '"matmul_inputs": "bf16"' "$ours" && round+=(--bf16-matmul-inputs)
  grep -q '"kv_cache": "bf16"' "$ours" && round+=(--bf16-kv-cache)
  grep -q '"kv_cache": "e5m2"' "$ours" && round+=(--e5m2-kv-cache)
  if ! "$py" "$here/torch_ref.py" "${round[@]}" --model "$dir" --prompts "$prompts" --greedy "$steps" --out "$ref"; then
    echo "FAIL $name: reference run failed"
    status=1
    continue
  fi
  "$py" "$here/forward_compare.py" check --model "$dir" --ref "$ref" --ours "$ours" || status=1
done
if [ $found = 0 ]; then
  echo "FAIL: no model directories under $root"
  exit 1
fi
[ $status = 0 ] && echo "forward_compare: all models passed" || echo "forward_compare: FAILED"
exit $status

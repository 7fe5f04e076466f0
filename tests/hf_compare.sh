#!/bin/bash
# hf_compare.sh - check lmserve's forward pass against Hugging Face
# transformers' logits, stored as fixtures in tests/data/hf/<model>.json
# (made by tools/hf_logits.py; see tests/data/hf/README.md).
#
# Usage:
#   tests/hf_compare.sh FORWARD_DUMP FIXTURE_ROOT [BACKEND]
# For every tests/data/hf/<model>.json whose model directory exists under
# FIXTURE_ROOT it writes the prompts (tests/forward_compare.py prompts),
# runs
#   FORWARD_DUMP --model DIR --prompts P --greedy 16 --out OURS.json [--backend BACKEND]
# and tests/hf_compare.py check (one line per prompt). BACKEND is passed to
# forward_dump as given (cpu, cuda or auto; its default is cpu). The CPU
# backend computes in float32; any other is checked with the bfloat16
# limits of the CUDA backend, whatever the checkpoint dtype.
# With no fixture in tests/data/hf it prints SKIPPED and exits 0.
# Exits non-zero if any model fails. Work files go to a temporary directory.
set -u

if [ $# -lt 2 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
dump=$1
root=$2
backend=${3:-}
data=$here/data/hf
ours_dtype=float32
[ -n "$backend" ] && [ "$backend" != cpu ] && ours_dtype=bfloat16
steps=16

shopt -s nullglob
fixtures=("$data"/*.json)
if [ ${#fixtures[@]} = 0 ]; then
  echo "SKIPPED: no Transformers fixtures in tests/data/hf (tools/gpu-run.sh makes them on a GPU machine)"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

status=0
checked=0
for fixture in "${fixtures[@]}"; do
  name=$(basename "$fixture" .json)
  dir=$root/$name
  if [ ! -f "$dir/config.json" ]; then
    echo "skip $name: no model directory $dir"
    continue
  fi
  checked=$((checked + 1))
  prompts=$work/$name.prompts.json
  ours=$work/$name.ours.json
  if ! "$py" "$here/forward_compare.py" prompts --model "$dir" --out "$prompts"; then
    echo "FAIL $name: making the prompts failed"
    status=1
    continue
  fi
  args=(--model "$dir" --prompts "$prompts" --greedy "$steps" --out "$ours")
  [ -n "$backend" ] && args+=(--backend "$backend")
  "$dump" "${args[@]}" || { echo "FAIL $name: $dump exited with status $?"; status=1; continue; }
  "$py" "$here/hf_compare.py" check --fixture "$fixture" --ours "$ours" --model "$dir" \
    --prompts "$prompts" --ours-dtype "$ours_dtype" || status=1
done
if [ $checked = 0 ]; then
  echo "FAIL: none of the ${#fixtures[@]} fixtures in tests/data/hf has a model under $root"
  exit 1
fi
[ $status = 0 ] && echo "hf_compare: all $checked models passed" || echo "hf_compare: FAILED"
exit $status

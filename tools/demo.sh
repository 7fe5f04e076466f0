#!/usr/bin/env bash
# tools/demo.sh - sets up (tools/setup.sh) and streams a completion from the
# built-in demo model. Extra arguments go to `lmserve generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
if [ $# -eq 0 ]; then
  set -- --prompt "Once upon a time" --max-tokens 64
fi
exec bin/lmserve generate "$@"

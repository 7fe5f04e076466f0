#!/usr/bin/env bash
# tools/demo.sh - sets up (tools/setup.sh) and serves the built-in demo model
# over gRPC on 127.0.0.1:50051, in the foreground (Ctrl-C drains and exits).
# Extra arguments go to `lmserve serve` (e.g. --port 50052 --metrics-port 9090).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
port=50051
args=("$@")
for ((i = 0; i < ${#args[@]} - 1; i++)); do
  [ "${args[$i]}" = --port ] && port=${args[$((i + 1))]}
done
cat <<MSG
lmserve: serving the demo model on 127.0.0.1:$port (Ctrl-C to stop). In another terminal:
  bin/lmserve-client generate --server 127.0.0.1:$port --prompt "Once upon a time" --max-tokens 32
  grpcurl -plaintext -d '{"text": "Once upon a time", "stopping": {"max_tokens": 32}}' 127.0.0.1:$port lmserve.v1.Generation/Generate
MSG
exec bin/lmserve serve "$@"

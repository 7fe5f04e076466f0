#!/usr/bin/env bash
# tests/e2e_run.sh - lmserve's gRPC server end to end: starts `lmserve serve`
# on free loopback ports with a model, waits until Health reports SERVING,
# runs the Python (grpcio) and Node (@grpc/grpc-js) tests against it and the
# C client (lmserve-client generate and load), then stops it with SIGTERM
# and checks it exits 0 with no sanitizer reports (ASan/LSan leaks at exit
# included).
#
# usage: tests/e2e_run.sh BIN_DIR MODEL_DIR [--quick]
#   BIN_DIR holds lmserve and lmserve-client (build/opt, build/asan)
#   --quick: fewer prompts and streams (for the sanitizer build)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bindir=$(realpath "$1")
model=$(realpath "$2")
quick=${3:-}
lmserve=$bindir/lmserve
client=$bindir/lmserve-client
py=/usr/bin/python3
tmp=$(mktemp -d)
export ROOT=$root
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
ok() { echo "ok - $*"; }
bad() {
  echo "not ok - $*"
  fails=$((fails + 1))
}

free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
mport=$(free_port)
addr=127.0.0.1:$port
echo "# $lmserve serve --model $model --port $port --metrics-port $mport"
"$lmserve" serve --model "$model" --host 127.0.0.1 --port "$port" --metrics-port "$mport" \
  --drain-seconds 20 >"$tmp/server.log" 2>&1 &
server_pid=$!

# Health SERVING within 120 s (the port opens once the model is loaded).
if $py - "$addr" "$server_pid" <<'PY'; then
import os, sys, time
sys.path.insert(0, os.path.join(os.environ.get("ROOT", "."), "clients", "python"))
import grpc, lmserve_client as lc
ns = lc.load_protos()
addr, pid = sys.argv[1], int(sys.argv[2])
ch = grpc.insecure_channel(addr)
stub = ns.health_pb2_grpc.HealthStub(ch)
end = time.time() + 120
while time.time() < end:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the server exited during start-up")
    try:
        if stub.Check(ns.health_pb2.HealthCheckRequest(), timeout=1).status == 1:
            sys.exit(0)
    except grpc.RpcError:
        pass
    time.sleep(0.1)
sys.exit("no SERVING within 120 s")
PY
  ok "the server reports SERVING"
else
  bad "the server reports SERVING"
  cat "$tmp/server.log"
  exit 1
fi

echo "# tests/e2e_test.py"
ROOT=$root $py "$root/tests/e2e_test.py" --server "$addr" --metrics "127.0.0.1:$mport" \
  --lmserve "$lmserve" --model "$model" --logdir "$tmp" $quick || fails=$((fails + 1))

echo "# tests/e2e_test.js"
node "$root/tests/e2e_test.js" --server "$addr" --metrics "127.0.0.1:$mport" --model "$model" \
  --lmserve "$lmserve" $quick || fails=$((fails + 1))

echo "# lmserve-client"
"$client" generate --server "$addr" --prompt "The capital of France is" --max-tokens 16 \
  --temperature 0 >"$tmp/c.txt" 2>"$tmp/c.err"
"$lmserve" generate --model "$model" --prompt "The capital of France is" --max-tokens 16 \
  --temperature 0 >"$tmp/ref.txt" 2>/dev/null
if cmp -s "$tmp/c.txt" "$tmp/ref.txt"; then
  ok "lmserve-client generate prints what lmserve generate prints"
else
  bad "lmserve-client generate prints what lmserve generate prints: $(head -c 200 "$tmp/c.txt" "$tmp/c.err")"
fi
"$client" generate --server "$addr" --prompt "Hi" --max-tokens 8 --temperature 0 --ignore-eos \
  --json >"$tmp/c.json" 2>&1
if $py - "$tmp/c.json" <<'PY'; then
import json, sys
msgs = [json.loads(l) for l in open(sys.argv[1])]
assert msgs[0]["request_id"], msgs[0]
assert sum(len(m["token_ids"]) for m in msgs) == 8, msgs
assert msgs[-1]["finish_reason"] == "length" and msgs[-1]["usage"]["completion_tokens"] == 8
PY
  ok "lmserve-client generate --json: one object per message, ids, usage"
else
  bad "lmserve-client generate --json: $(head -c 300 "$tmp/c.json")"
fi
"$client" generate --server "$addr" --prompt "" --max-tokens 8 >/dev/null 2>"$tmp/e.err"
rc=$?
if [ $rc -eq 1 ] && grep -q INVALID_ARGUMENT "$tmp/e.err"; then
  ok "lmserve-client generate reports INVALID_ARGUMENT and exits 1 for an empty prompt"
else
  bad "lmserve-client generate on an empty prompt: exit $rc, $(cat "$tmp/e.err")"
fi
printf 'Hello\nName a colour.\n' | "$client" chat --server "$addr" --max-tokens 8 \
  --temperature 0 >"$tmp/chat.txt" 2>&1
rc=$?
lines=$(wc -l <"$tmp/chat.txt")
if [ $rc -eq 0 ] && [ "$lines" -ge 2 ]; then
  ok "lmserve-client chat answers two turns"
else
  bad "lmserve-client chat: exit $rc, $(head -c 300 "$tmp/chat.txt")"
fi
n=16
[ -n "$quick" ] && n=8
"$client" load --server "$addr" --concurrency 4 --requests $n --input-tokens 32 \
  --output-tokens 16 --cancel-fraction 0.25 --json >"$tmp/load.json" 2>"$tmp/load.err"
rc=$?
if [ $rc -eq 0 ] && $py - "$tmp/load.json" "$n" <<'PY'; then
import json, sys
r = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
assert r["requests"] == n and r["errors"] == 0, r
assert r["ok"] + r["cancelled"] == n, r
assert r["output_tokens"] >= r["ok"] * 16, r
assert r["ttft_s"]["n"] == n and r["itl_s"]["p50"] > 0 and r["output_tok_per_s"] > 0, r
PY
  ok "lmserve-client load: $n requests, cancelled ones counted, TTFT/ITL reported"
else
  bad "lmserve-client load: exit $rc: $(cat "$tmp/load.err") $(head -c 600 "$tmp/load.json")"
fi

if cat "$tmp"/*.err | grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:"; then
  bad "no sanitizer reports from lmserve-client"
  cat "$tmp"/*.err | grep -A 20 -E "ERROR: (Address|Leak)Sanitizer|runtime error:" | head -40
else
  ok "no sanitizer reports (leaks at exit included) from lmserve-client"
fi

echo "# SIGTERM"
kill -TERM "$server_pid"
rc=0
for _ in $(seq 1 600); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
  bad "the server exits within 60 s of SIGTERM"
else
  wait "$server_pid"
  rc=$?
  server_pid=
  if [ $rc -eq 0 ]; then ok "the server exits 0 after SIGTERM"; else bad "the server exits 0 after SIGTERM (exit $rc)"; fi
fi
if grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$tmp/server.log"; then
  bad "no sanitizer reports from the server"
  grep -A 20 -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$tmp/server.log" | head -60
else
  ok "no sanitizer reports (leaks at exit included) from the server"
fi
echo "# server log (last lines)"
tail -n 5 "$tmp/server.log"
echo "e2e: $fails failed"
[ $fails -eq 0 ]

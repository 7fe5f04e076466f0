#!/usr/bin/env bash
# tests/server_smoke.sh - `lmserve serve` as an operator sees it, with no
# generated stubs and no grpcurl: raw gRPC calls whose protobuf bytes are
# written by hand from the .proto. The port opens after the model loads;
# health Check and Watch; reflection lists and describes the services;
# Generate streams with x-request-id; unknown methods are UNIMPLEMENTED;
# /metrics counts it all; SIGTERM flips health to NOT_SERVING, lets the
# stream in flight finish and exits 0; a taken port is a one-line error.
#
# usage: tests/server_smoke.sh BIN/lmserve FIXTURES_DIR
set -uo pipefail
lmserve=$(realpath "$1")
model=$(realpath "$2")/qwen3-bf16
tmp=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

"$lmserve" serve --model "$model" --port 0 --metrics-port 0 --drain-seconds 20 \
  --max-model-len 512 --kv-cache-bytes 16000000 >"$tmp/out" 2>"$tmp/err" &
pid=$!

/usr/bin/python3 - "$tmp" "$pid" <<'PY'
import os, re, signal, sys, threading, time, urllib.request
import grpc

tmp, pid = sys.argv[1], int(sys.argv[2])
fails = 0
def check(name, cond):
    global fails
    print(("ok - " if cond else "not ok - ") + name)
    fails += 0 if cond else 1

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
def field_bytes(num, data): return varint(num << 3 | 2) + varint(len(data)) + data
def field_int(num, v): return varint(num << 3) + varint(v)
ident = lambda b: b

# the port is printed once the model is loaded and the server listens
port = None
for _ in range(600):
    m = re.search(r"listening on [^:]+:(\d+)", open(tmp + "/out").read())
    if m:
        port = m.group(1)
        break
    if not os.path.exists("/proc/%d" % pid):
        break
    time.sleep(0.1)
check("the server prints its address once the model is loaded", port is not None)
if port is None:
    print(open(tmp + "/err").read())
    sys.exit(1)
mport = re.search(r"metrics on http://[^:]+:(\d+)", open(tmp + "/err").read()).group(1)
ch = grpc.insecure_channel("127.0.0.1:" + port)
def unary(path, req, **kw):
    return ch.unary_unary(path, request_serializer=ident, response_deserializer=ident)(req, **kw)
def stream(path, req, **kw):
    return ch.unary_stream(path, request_serializer=ident, response_deserializer=ident)(req, **kw)
def metrics():
    return urllib.request.urlopen("http://127.0.0.1:%s/metrics" % mport, timeout=10).read().decode()

# health: HealthCheckResponse.status = 1 (SERVING) is b"\x08\x01"
check("Health.Check('') is SERVING", unary("/grpc.health.v1.Health/Check", b"") == b"\x08\x01")
check("Health.Check('lmserve.v1.Generation') is SERVING",
      unary("/grpc.health.v1.Health/Check", field_bytes(1, b"lmserve.v1.Generation")) == b"\x08\x01")
try:
    unary("/grpc.health.v1.Health/Check", field_bytes(1, b"no.such.Service"))
    check("Health.Check of an unknown service is NOT_FOUND", False)
except grpc.RpcError as e:
    check("Health.Check of an unknown service is NOT_FOUND", e.code() == grpc.StatusCode.NOT_FOUND)

# reflection, both versions: list_services (field 7) and file_containing_symbol (field 4)
for ver in ("v1", "v1alpha"):
    path = "/grpc.reflection.%s.ServerReflection/ServerReflectionInfo" % ver
    rpc = ch.stream_stream(path, request_serializer=ident, response_deserializer=ident)
    out = list(rpc(iter([field_bytes(7, b""), field_bytes(4, b"lmserve.v1.Generation"),
                         field_bytes(3, b"no/such.proto")]), timeout=10))
    check("reflection %s answers every request" % ver, len(out) == 3)
    check("reflection %s lists lmserve.v1.Generation, health and reflection" % ver,
          len(out) == 3 and all(s in out[0] for s in
              (b"lmserve.v1.Generation", b"grpc.health.v1.Health", b"grpc.reflection.v1.ServerReflection")))
    check("reflection %s describes Generation with its imports" % ver,
          len(out) == 3 and b"lmserve/v1/lmserve.proto" in out[1] and b"google/protobuf/struct.proto" in out[1]
          and b"GenerateRequest" in out[1])
    check("reflection %s: an unknown file is an error response (field 7)" % ver,
          len(out) == 3 and b"no file named" in out[2])

# Generate "Hello", stopping {max_tokens: 4}: streamed, request id first, finish last
call = stream("/lmserve.v1.Generation/Generate", field_bytes(1, b"Hello") + field_bytes(4, field_int(1, 4)))
msgs = list(call)
md = dict(call.initial_metadata())
check("Generate streams messages", len(msgs) >= 1)
check("the id is in initial metadata x-request-id and the first message",
      "x-request-id" in md and field_bytes(1, md["x-request-id"].encode()) in msgs[0])
check("the last message says finish_reason 'length'", b"\x2a\x06length" in msgs[-1])

try:
    unary("/lmserve.v1.Generation/NoSuchMethod", b"")
    check("an unknown method is UNIMPLEMENTED", False)
except grpc.RpcError as e:
    check("an unknown method is UNIMPLEMENTED", e.code() == grpc.StatusCode.UNIMPLEMENTED)
try:
    list(stream("/lmserve.v1.Generation/Generate", b"\xff\xff\xff"))
    check("malformed protobuf is INVALID_ARGUMENT", False)
except grpc.RpcError as e:
    check("malformed protobuf is INVALID_ARGUMENT", e.code() == grpc.StatusCode.INVALID_ARGUMENT)

text = metrics()
check("/metrics counts the Generate call",
      re.search(r'lmserve_requests_total\{[^}]*method="Generate",code="0"\} 1\b', text) is not None)
check("/metrics counts the bad request",
      re.search(r'lmserve_requests_total\{[^}]*method="Generate",code="3"\} 1\b', text) is not None)
check("/metrics has the generation token total", re.search(r"lmserve_generation_tokens_total\{[^}]*\} 4\b", text) is not None)
check("/metrics: no KV blocks held once the stream is done",
      re.search(r"lmserve_kv_blocks_used\{[^}]*\} 0\b", text) is not None)
check("/metrics has the TTFT histogram",
      'lmserve_time_to_first_token_seconds_bucket{model_name="qwen3-bf16",le="+Inf"} 1' in text)

# drain: a Watch stream and a long Generate are open when SIGTERM comes
watch = stream("/grpc.health.v1.Health/Watch", b"")
watch_msgs = []
def read_watch():
    try:
        for m in watch:
            watch_msgs.append(m)
    except grpc.RpcError:
        pass
wt = threading.Thread(target=read_watch)
wt.start()
long_req = field_bytes(1, b"Once upon a time") + field_bytes(4, field_int(1, 48) + field_int(5, 1))
gen = stream("/lmserve.v1.Generation/Generate", long_req)
it = iter(gen)
first = next(it)
time.sleep(0.3)
os.kill(pid, signal.SIGTERM)
rest = list(it)
check("the stream in flight at SIGTERM finishes with OK", gen.code() == grpc.StatusCode.OK and
      b"\x2a\x06length" in (rest[-1] if rest else first))
def gone():  # exited (a zombie) or already reaped; bash reports the status
    try:
        return open("/proc/%d/stat" % pid).read().split(") ")[1][0] == "Z"
    except OSError:
        return True
for _ in range(300):
    if gone():
        break
    time.sleep(0.1)
wt.join(10)
check("Watch said SERVING, then NOT_SERVING while draining",
      watch_msgs[:2] == [b"\x08\x01", b"\x08\x02"])
err = open(tmp + "/err").read()
check("one log line per request, with its id and status",
      re.search(r"info Generate id=\S+ peer=\S+ prompt_tokens=\d+ output_tokens=4 .*status=0 finish=length", err) is not None)
sys.exit(1 if fails else 0)
PY
rc=$?
wait "$pid"
src=$?
pid=
if [ $src -eq 0 ]; then
  echo "ok - lmserve exits 0 after the drain"
else
  echo "not ok - lmserve exits 0 after the drain (exit $src)"
  rc=1
fi

# a port already in use: one line naming it, exit 1
/usr/bin/python3 -c 'import socket,sys,time
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(1); print(s.getsockname()[1]); sys.stdout.flush(); time.sleep(60)' >"$tmp/port" &
holder=$!
for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
"$lmserve" serve --model "$model" --port "$(cat "$tmp/port")" --max-model-len 512 \
  --kv-cache-bytes 16000000 >/dev/null 2>"$tmp/err2"
prc=$?
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null
if [ $prc -eq 1 ] && grep -q "cannot listen on 127.0.0.1:$(cat "$tmp/port")" "$tmp/err2"; then
  echo "ok - a port in use is a one-line error and exit 1"
else
  echo "not ok - a port in use is a one-line error and exit 1 (exit $prc)"
  cat "$tmp/err2"
  rc=1
fi
exit $rc

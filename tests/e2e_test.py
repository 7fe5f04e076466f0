#!/usr/bin/python3
"""tests/e2e_test.py - lmserve's gRPC server end to end, from Python grpcio.

Runs against a server already listening (tests/e2e_run.sh starts it) and
compares what it streams with things that are not the server: the
`lmserve generate` command line, the model's config.json, its own
outputs one request at a time. Cancellation, killed clients and deadlines
are checked through the server's /metrics (lmserve_kv_blocks_used back to
its start value). Overload and graceful drain run on a second server this
script starts with small limits. One line per check: "ok - ..." or
"not ok - ...".

usage: tests/e2e_test.py --server HOST:PORT --metrics HOST:PORT
                         --lmserve BIN --model DIR [--quick]
"""
import argparse
import concurrent.futures as cf
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
import grpc  # noqa: E402
import lmserve_client as lc  # noqa: E402

ns = lc.load_protos()
pb = ns.lmserve_pb2
SC = grpc.StatusCode
failures = 0


def check(cond, name, detail=""):
    global failures
    if cond:
        print("ok - " + name)
    else:
        failures += 1
        print("not ok - %s%s" % (name, ": " + str(detail) if detail != "" else ""))
    sys.stdout.flush()
    return cond


def rpc_code(fn):
    """Runs fn; returns (StatusCode, details) of the RpcError, or (OK, result)."""
    try:
        return SC.OK, fn()
    except grpc.RpcError as e:
        return e.code(), e.details()


def stream(stub, req, method="Generate", timeout=None, metadata=None):
    """Runs one stream to its end: (messages, initial metadata dict)."""
    call = getattr(stub, method)(req, timeout=timeout, metadata=metadata)
    msgs = list(call)
    return msgs, dict(call.initial_metadata())


def text_of(msgs):
    return "".join(m.text for m in msgs)


def ids_of(msgs):
    return [t for m in msgs for t in m.token_ids]


class Metrics:
    def __init__(self, addr):
        self.url = "http://%s/metrics" % addr

    def values(self):
        """[(name, {label: value}, value)] of every sample on /metrics."""
        body = urllib.request.urlopen(self.url, timeout=5).read().decode()
        out = []
        for line in body.splitlines():
            m = re.match(r'^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$', line)
            if m:
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                out.append((m.group(1), labels, float(m.group(3))))
        return out

    def get(self, name, **labels):
        """The sum of name's samples whose labels include labels."""
        return sum(v for n, l, v in self.values()
                   if n == name and all(l.get(k) == x for k, x in labels.items()))

    def kv_used(self):
        return self.get("lmserve_kv_blocks_used")

    def wait_kv(self, start, timeout=15.0):
        """Polls until lmserve_kv_blocks_used is back to start; its last value."""
        end = time.time() + timeout
        v = self.kv_used()
        while v != start and time.time() < end:
            time.sleep(0.05)
            v = self.kv_used()
        return v

    def kv_baseline(self):
        """lmserve_kv_blocks_used once the server is idle (the previous test's
        last stream may have ended before its request released its blocks)."""
        return self.wait_kv(0)

    def requests(self, method, code):
        """lmserve_requests_total for a StatusCode (labelled by name or number)."""
        return (self.get("lmserve_requests_total", method=method, code=code.name) +
                self.get("lmserve_requests_total", method=method, code=str(code.value[0])))


_references = {}


def reference(args, prompt, max_tokens, ignore_eos=False):
    """`lmserve generate` greedy output: what the server must stream."""
    key = (prompt, max_tokens, ignore_eos)
    if key in _references:
        return _references[key]
    cmd = [args.lmserve, "generate", "--model", args.model, "--prompt", prompt,
           "--max-tokens", str(max_tokens), "--temperature", "0"]
    if ignore_eos:
        cmd.append("--ignore-eos")
    out = subprocess.run(cmd, capture_output=True, check=True).stdout.decode()
    _references[key] = out[:-1] if out.endswith("\n") else out
    return _references[key]


def greedy(prompt, max_tokens, ignore_eos=False, **kw):
    return lc.generate_request(prompt, max_tokens, 0.0, ignore_eos, **kw)


def long_request(info, n_prompt=200, **kw):
    """Greedy, ignore_eos, to the end of the context: runs long enough to be
    cancelled, killed or timed out mid-stream."""
    ids = [(i * 7919) % 20000 + 1000 for i in range(n_prompt)]
    return greedy(ids, info.max_model_len - n_prompt, ignore_eos=True, **kw)


# --- the tests -------------------------------------------------------------

def test_health(channel):
    h = ns.health_pb2
    stub = ns.health_pb2_grpc.HealthStub(channel)
    serving = h.HealthCheckResponse.SERVING
    check(stub.Check(h.HealthCheckRequest(service="")).status == serving,
          "Health.Check of the server is SERVING")
    check(stub.Check(h.HealthCheckRequest(service="lmserve.v1.Generation")).status == serving,
          "Health.Check of lmserve.v1.Generation is SERVING")
    code, _ = rpc_code(lambda: stub.Check(h.HealthCheckRequest(service="no.such.Service")))
    check(code == SC.NOT_FOUND, "Health.Check of an unknown service is NOT_FOUND", code)
    watch = stub.Watch(h.HealthCheckRequest(service=""))
    first = next(watch)
    watch.cancel()
    check(first.status == serving, "Health.Watch sends SERVING first", first)


def test_model_info(stub, args):
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    check(info.architecture == cfg["architectures"][0],
          "GetModelInfo architecture matches config.json", info.architecture)
    check(info.vocab_size == cfg["vocab_size"], "GetModelInfo vocab_size matches config.json",
          info.vocab_size)
    check(0 < info.max_model_len <= cfg["max_position_embeddings"],
          "GetModelInfo max_model_len within max_position_embeddings", info.max_model_len)
    check(info.kv_capacity_tokens == info.num_kv_blocks * info.block_size > 0,
          "GetModelInfo KV capacity = blocks x block size", info)
    # the server runs with no --max-num-batched-tokens: the backend's default
    want = {"cpu": 512, "cuda": 2048}.get(info.backend)
    check(info.max_num_batched_tokens == want,
          "GetModelInfo max_num_batched_tokens is the %s backend's default" % info.backend,
          (info.max_num_batched_tokens, want))
    check(info.max_decode_slowdown == 2.3, "GetModelInfo max_decode_slowdown is the default 2.3",
          info.max_decode_slowdown)
    # on by default where the backend runs layered chunks: the CPU
    check(info.layered_prefill == (info.backend == "cpu"),
          "GetModelInfo layered_prefill is on with the %s backend" % info.backend
          if info.backend == "cpu" else "GetModelInfo layered_prefill is off on CUDA",
          info.layered_prefill)
    return info


def test_kv_metrics(metrics, args, info):
    """/metrics describes the KV cache as config.json and GetModelInfo do."""
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    kv = [l for n, l, v in metrics.values() if n == "lmserve_kv_cache_info" and v == 1]
    check(len(kv) == 1, "/metrics has one lmserve_kv_cache_info sample", kv)
    if not kv:
        return
    kv = kv[0]
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    kv_heads = cfg.get("num_key_value_heads") or heads
    # the CPU keeps bf16 and f32 checkpoints' K/V in their own type, others in f32
    dtype = cfg.get("torch_dtype", "float32")
    if dtype not in ("bfloat16", "float32"):
        dtype = "float32"
    size = {"bfloat16": 2, "float32": 4}[dtype]
    want_bytes = 2 * cfg["num_hidden_layers"] * kv_heads * info.block_size * head_dim * size
    check(kv.get("dtype") == dtype and kv.get("block_size") == str(info.block_size) and
          kv.get("blocks") == str(info.num_kv_blocks) and kv.get("block_bytes") == str(want_bytes),
          "lmserve_kv_cache_info: dtype, block size, blocks and block bytes from config.json",
          (kv, dtype, want_bytes))
    used, ratio = metrics.kv_used(), metrics.get("lmserve_kv_cache_usage_ratio")
    check(abs(ratio - used / info.num_kv_blocks) < 1e-6,
          "lmserve_kv_cache_usage_ratio = blocks used / blocks", (ratio, used))


def test_generate_matches_cli(stub, args):
    prompts = ["The capital of France is", "Once upon a time, in a land far away,"]
    for prompt in prompts[: 1 if args.quick else 2]:
        for ignore_eos in (False, True):
            n = 24
            msgs, _ = stream(stub, greedy(prompt, n, ignore_eos))
            want = reference(args, prompt, n, ignore_eos)
            check(text_of(msgs) == want,
                  "Generate %r (max_tokens %d%s) streams what `lmserve generate` prints" %
                  (prompt, n, ", ignore_eos" if ignore_eos else ""),
                  (text_of(msgs), want))
            last = msgs[-1]
            check(last.finish_reason in ("length", "eos", "stop_token") and
                  last.usage.completion_tokens == len(ids_of(msgs)),
                  "the last message has finish_reason and usage counting every token",
                  (last.finish_reason, last.usage.completion_tokens, len(ids_of(msgs))))
            if ignore_eos:
                check(len(ids_of(msgs)) == n and last.finish_reason == "length",
                      "ignore_eos gives exactly max_tokens tokens", len(ids_of(msgs)))
    prompt = prompts[0]
    ids = list(stub.Tokenize(pb.TokenizeRequest(text=prompt)).token_ids)
    by_text, _ = stream(stub, greedy(prompt, 16))
    by_ids, _ = stream(stub, greedy(ids, 16))
    check(ids_of(by_ids) == ids_of(by_text) and by_ids[-1].usage.prompt_tokens == len(ids),
          "a token-id prompt gives the same tokens as its text")


def test_tokenize(stub, args):
    texts = ["Hello world", "naïve café — 東京 🚀 ok", "  leading spaces\nand\ttabs", "x" * 300]
    for t in texts:
        ids = list(stub.Tokenize(pb.TokenizeRequest(text=t)).token_ids)
        cli = subprocess.run([args.lmserve, "tokenize", "--model", args.model], input=t.encode(),
                             capture_output=True, check=True).stdout.decode()
        check(ids == json.loads(cli), "Tokenize %r gives the ids `lmserve tokenize` gives" % t[:20],
              (ids, cli))
        back = stub.Detokenize(pb.DetokenizeRequest(token_ids=ids)).text
        check(back == t, "Detokenize(Tokenize(%r)) round-trips" % t[:20], back)


def test_chat(stub):
    msgs = [pb.ChatMessage(role="system", content="You are terse."),
            pb.ChatMessage(role="user", content="Name a colour.")]
    req = pb.ChatRequest(messages=msgs)
    req.sampling.temperature = 0
    req.stopping.max_tokens = 16
    a, _ = stream(stub, req, "Chat")
    b, _ = stream(stub, req, "Chat")
    user_ids = stub.Tokenize(pb.TokenizeRequest(text="You are terse. Name a colour.")).token_ids
    check(a[-1].finish_reason != "" and len(ids_of(a)) >= 1,
          "Chat streams tokens and ends with a finish_reason", a[-1].finish_reason)
    check(a[-1].usage.prompt_tokens > len(user_ids),
          "Chat's prompt is the rendered template (more tokens than the contents)",
          a[-1].usage.prompt_tokens)
    check(text_of(a) == text_of(b), "greedy Chat is deterministic")
    empty = pb.ChatRequest()
    code, _ = rpc_code(lambda: list(stub.Chat(empty)))
    check(code == SC.INVALID_ARGUMENT, "Chat with no messages is INVALID_ARGUMENT", code)


def test_request_ids(stub, info):
    msgs, md = stream(stub, greedy("Hello", 4, request_id="e2e-given-1"))
    check(msgs[0].request_id == "e2e-given-1" and md.get("x-request-id") == "e2e-given-1",
          "a given request_id comes back in the first message and x-request-id",
          (msgs[0].request_id, md))
    check(all(m.request_id == "" for m in msgs[1:]), "only the first message carries the id")
    msgs, md = stream(stub, greedy("Hello", 4))
    rid = msgs[0].request_id
    check(rid != "" and md.get("x-request-id") == rid,
          "an assigned request id is in the first message and x-request-id", (rid, md))
    _, md2 = stream(stub, greedy("Hello", 4))
    check(md2.get("x-request-id") not in (None, rid), "assigned ids differ")

    live = stub.Generate(long_request(info, request_id="e2e-live"))
    first = next(live)
    code, _ = rpc_code(lambda: list(stub.Generate(greedy("Hi", 4, request_id="e2e-live"))))
    check(code == SC.ALREADY_EXISTS, "a live duplicate request_id is ALREADY_EXISTS", code)
    stub.Abort(pb.AbortRequest(request_id="e2e-live"))
    rest = list(live)
    check(rest and rest[-1].finish_reason == "abort" and
          len(ids_of([first] + rest)) < info.max_model_len - 200,
          "Abort ends the live stream early with finish_reason abort",
          rest[-1].finish_reason if rest else "no messages")
    code, _ = rpc_code(lambda: stub.Abort(pb.AbortRequest(request_id="e2e-live")))
    check(code == SC.NOT_FOUND, "Abort of a finished id is NOT_FOUND", code)
    msgs, _ = stream(stub, greedy("Hello", 4, request_id="e2e-live"))
    check(msgs[0].request_id == "e2e-live", "a finished request's id can be used again")


def bad_inputs(info):
    """(name, method, request or raw bytes, expected codes)."""
    over = info.max_model_len
    def g(**kw):
        return greedy("Hello", 8, **kw)
    r = []
    r.append(("empty text prompt", "Generate", greedy("", 8), {SC.INVALID_ARGUMENT}))
    r.append(("no prompt at all", "Generate", pb.GenerateRequest(), {SC.INVALID_ARGUMENT}))
    r.append(("an empty token-id prompt", "Generate", greedy([], 8), {SC.INVALID_ARGUMENT}))
    r.append(("token id = vocab_size", "Generate", greedy([1, info.vocab_size], 8),
              {SC.INVALID_ARGUMENT}))
    r.append(("token id -1", "Generate", greedy([1, -1], 8), {SC.INVALID_ARGUMENT}))
    bad = g()
    bad.sampling.temperature = -0.5
    r.append(("negative temperature", "Generate", bad, {SC.INVALID_ARGUMENT}))
    bad = g()
    bad.sampling.top_p = 1.5
    r.append(("top_p 1.5", "Generate", bad, {SC.INVALID_ARGUMENT}))
    bad = g()
    bad.sampling.temperature = float("nan")
    r.append(("temperature NaN", "Generate", bad, {SC.INVALID_ARGUMENT}))
    r.append(("top_logprobs 21", "Generate", g(top_logprobs=21), {SC.INVALID_ARGUMENT}))
    r.append(("prompt + max_tokens over max_model_len", "Generate",
              greedy([1000] * 10, over), {SC.OUT_OF_RANGE, SC.INVALID_ARGUMENT}))
    r.append(("a prompt longer than max_model_len", "Generate",
              greedy([1000] * (over + 1), 1),
              {SC.OUT_OF_RANGE, SC.INVALID_ARGUMENT, SC.RESOURCE_EXHAUSTED}))
    r.append(("request_id over 128 bytes", "Generate", g(request_id="x" * 129),
              {SC.INVALID_ARGUMENT}))
    r.append(("Detokenize an unknown id", "Detokenize",
              pb.DetokenizeRequest(token_ids=[info.vocab_size + 5]), {SC.INVALID_ARGUMENT}))
    r.append(("Abort with no id", "Abort", pb.AbortRequest(), {SC.INVALID_ARGUMENT, SC.NOT_FOUND}))
    r.append(("Abort of an unknown id", "Abort", pb.AbortRequest(request_id="no-such-id"),
              {SC.NOT_FOUND}))
    r.append(("malformed protobuf to Generate", "/lmserve.v1.Generation/Generate",
              b"\xff\xff\xff\xff", {SC.INVALID_ARGUMENT}))
    r.append(("malformed protobuf to Tokenize", "/lmserve.v1.Generation/Tokenize",
              b"\x0a\x05ab", {SC.INVALID_ARGUMENT}))
    r.append(("an unknown method", "/lmserve.v1.Generation/NoSuchMethod", b"",
              {SC.UNIMPLEMENTED}))
    r.append(("an unknown service", "/no.such.v1.Service/Call", b"", {SC.UNIMPLEMENTED}))
    return r


def test_bad_inputs(stub, channel, info, args):
    for name, method, req, want in bad_inputs(info):
        if method.startswith("/"):
            call = channel.unary_stream(method)  # raw bytes, no serializers
            code, detail = rpc_code(lambda: list(call(req, timeout=30)))
        elif method in ("Generate", "Chat"):
            code, detail = rpc_code(lambda: list(getattr(stub, method)(req, timeout=30)))
        else:
            code, detail = rpc_code(lambda: getattr(stub, method)(req, timeout=30))
        check(code in want, "bad input: %s -> %s" % (name, "/".join(sorted(c.name for c in want))),
              "%s: %s" % (code, detail))
        if code in want and code != SC.UNIMPLEMENTED:
            check(isinstance(detail, str) and len(detail) > 8,
                  "  ... with a message saying what to fix", detail)
    msgs, _ = stream(stub, greedy("The capital of France is", 24))
    check(text_of(msgs) == reference(args, "The capital of France is", 24),
          "after the bad inputs the server still streams the reference output")


def test_cancel(stub, metrics, info):
    start = metrics.kv_baseline()
    call = stub.Generate(long_request(info))
    next(call)
    next(call)
    during = metrics.kv_used()
    cancelled0 = metrics.requests("Generate", SC.CANCELLED)
    call.cancel()
    code, _ = rpc_code(lambda: list(call))
    end = metrics.wait_kv(start)
    check(during > start, "a live stream holds KV blocks (%d > %d)" % (during, start))
    check(code == SC.CANCELLED and end == start,
          "cancel mid-stream: KV blocks used back to %d" % start, (code, end))
    time.sleep(0.2)
    check(metrics.requests("Generate", SC.CANCELLED) >= cancelled0 + 1,
          "cancel mid-stream is counted as CANCELLED in lmserve_requests_total")


def test_killed_client(metrics, args, info):
    start = metrics.kv_baseline()
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--server", args.server,
                              "--child-stream", str(info.max_model_len)],
                             stdout=subprocess.PIPE)
    line = child.stdout.readline().decode().strip()
    during = metrics.kv_used()
    child.send_signal(signal.SIGKILL)
    child.wait()
    end = metrics.wait_kv(start)
    check(line == "streaming" and during > start,
          "a client process mid-stream holds KV blocks", (line, during, start))
    check(end == start, "client killed with SIGKILL: KV blocks used back to %d" % start, end)


def child_stream(server, max_model_len):
    """--child-stream: a client that streams until it is killed."""
    channel, stub = lc.connect(server)
    ids = [(i * 7919) % 20000 + 1000 for i in range(200)]
    for i, _ in enumerate(stub.Generate(greedy(ids, max_model_len - 200, ignore_eos=True))):
        if i == 1:
            print("streaming", flush=True)
    return 0


def test_deadline(stub, metrics, info):
    start = metrics.kv_baseline()
    t0 = time.time()
    got = []
    call = stub.Generate(long_request(info), timeout=0.3)
    code, _ = rpc_code(lambda: [got.append(m) for m in call])
    took = time.time() - t0
    end = metrics.wait_kv(start)
    check(code == SC.DEADLINE_EXCEEDED and took < 5,
          "a 0.3 s deadline mid-stream gives DEADLINE_EXCEEDED", (code, took))
    check(not got or not got[-1].finish_reason, "the stream was cut before it finished")
    check(end == start, "after the deadline KV blocks used back to %d" % start, end)


def test_concurrent(stub, n, max_tokens):
    prompts = ["Request %d: the number %d is followed by" % (i, i * 37 % 1000) for i in range(n)]
    alone = [ids_of(stream(stub, greedy(p, max_tokens, ignore_eos=True))[0]) for p in prompts]
    t0 = time.time()
    with cf.ThreadPoolExecutor(max_workers=n) as pool:
        together = list(pool.map(
            lambda p: ids_of(stream(stub, greedy(p, max_tokens, ignore_eos=True),
                                    timeout=300)[0]), prompts))
    took = time.time() - t0
    same = sum(a == b for a, b in zip(alone, together))
    check(same == n and all(len(a) == max_tokens for a in alone),
          "%d concurrent streams equal their one-at-a-time outputs (%d/%d, %.1f s)" %
          (n, same, n, took))


def test_reflection(channel, args, server):
    """The grpcurl path: only the address is known; the schema comes from
    server reflection and the call is built from those descriptors."""
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
    results = {}
    for ver, mod, mod_grpc in (("v1", ns.reflection_pb2, ns.reflection_pb2_grpc),
                               ("v1alpha", ns.reflection_v1alpha_pb2,
                                ns.reflection_v1alpha_pb2_grpc)):
        stub = mod_grpc.ServerReflectionStub(channel)

        def ask(**kw):
            return next(iter(stub.ServerReflectionInfo(iter([mod.ServerReflectionRequest(**kw)]),
                                                       timeout=30)))
        names = sorted(s.name for s in ask(list_services="").list_services_response.service)
        check({"lmserve.v1.Generation", "grpc.health.v1.Health"} <= set(names) and
              ("grpc.reflection.%s.ServerReflection" % ver) in names,
              "reflection %s lists the services" % ver, names)
        files = {}
        todo = [("file_containing_symbol", "lmserve.v1.Generation")]
        while todo:
            kind, what = todo.pop()
            resp = ask(**{kind: what})
            for raw in resp.file_descriptor_response.file_descriptor_proto:
                fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files[fd.name] = fd
            for fd in list(files.values()):
                todo += [("file_by_filename", d) for d in fd.dependency
                         if d not in files and ("file_by_filename", d) not in todo]
        results[ver] = files
        err = ask(file_containing_symbol="no.such.Symbol").error_response
        check(err.error_code == SC.NOT_FOUND.value[0],
              "reflection %s: an unknown symbol is NOT_FOUND" % ver, err)
    files = results["v1"]
    pool = descriptor_pool.DescriptorPool()
    added = set()
    while len(added) < len(files):
        progress = False
        for name, fd in files.items():
            if name not in added and all(d in added for d in fd.dependency):
                pool.Add(fd)
                added.add(name)
                progress = True
        if not progress:
            break
    check(len(added) == len(files), "reflection gives every file the schema needs",
          sorted(files))
    svc = pool.FindServiceByName("lmserve.v1.Generation")
    method = svc.methods_by_name["Generate"]
    check(method.server_streaming and not method.client_streaming,
          "the fetched descriptor says Generate is server-streaming")
    fields = {f.name for f in method.input_type.fields}
    check({"text", "token_ids", "sampling", "stopping", "request_id"} <= fields,
          "GenerateRequest's fields come from the descriptor", fields)
    factory = message_factory.MessageFactory(pool)
    Req = factory.GetPrototype(method.input_type)
    Resp = factory.GetPrototype(method.output_type)
    req = json_format.ParseDict({"text": "The capital of France is",
                                 "sampling": {"temperature": 0},
                                 "stopping": {"max_tokens": 24}}, Req())
    call = channel.unary_stream("/lmserve.v1.Generation/Generate",
                                request_serializer=Req.SerializeToString,
                                response_deserializer=Resp.FromString)
    text = "".join(json_format.MessageToDict(m).get("text", "") for m in call(req, timeout=60))
    want = reference(args, "The capital of France is", 24)
    check(text == want, "Generate built only from reflected descriptors streams the reference",
          (text, want))


# --- a second server: overload and drain ------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(args, *flags):
    port = free_port()
    log = open(os.path.join(args.logdir, "e2e-server2-%d.log" % port), "w+")
    proc = subprocess.Popen([args.lmserve, "serve", "--model", args.model, "--host", "127.0.0.1",
                             "--port", str(port), "--metrics-port", str(free_port())] + list(flags),
                            stdout=log, stderr=subprocess.STDOUT)
    addr = "127.0.0.1:%d" % port
    channel, stub = lc.connect(addr)
    health = ns.health_pb2_grpc.HealthStub(channel)
    end = time.time() + 120
    while time.time() < end and proc.poll() is None:
        code, res = rpc_code(lambda: health.Check(ns.health_pb2.HealthCheckRequest(), timeout=1))
        if code == SC.OK and res.status == ns.health_pb2.HealthCheckResponse.SERVING:
            break
        time.sleep(0.1)
    return proc, log, channel, stub


def sanitizer_report(log):
    log.flush()
    log.seek(0)
    text = log.read()
    return re.findall(r"(ERROR: (?:Address|Leak)Sanitizer.*|runtime error:.*)", text)


def test_overload_and_drain(args, info):
    proc, log, channel, stub = start_server(args, "--max-num-seqs", "1", "--max-waiting", "2",
                                            "--drain-seconds", "30")
    if not check(proc.poll() is None, "a second server starts with --max-num-seqs 1 "
                 "--max-waiting 2"):
        return
    n = 8

    def one(i):
        # a queued request streams nothing until the running one ends (at
        # the end of the context: minutes on a large model), so one whose
        # deadline passes without a rejection was admitted too
        t0 = time.time()
        call = stub.Generate(long_request(info, n_prompt=64 + i), timeout=10)
        try:
            next(call)
            return "accepted", call, time.time() - t0
        except grpc.RpcError as e:
            if e.code() == SC.DEADLINE_EXCEEDED:
                return "accepted", None, time.time() - t0
            return e.code(), None, time.time() - t0
    with cf.ThreadPoolExecutor(max_workers=n) as pool:
        res = list(pool.map(one, range(n)))
    rejected = [r for r in res if r[0] == SC.RESOURCE_EXHAUSTED]
    accepted = [r for r in res if r[0] == "accepted"]
    check(len(accepted) <= 3 and len(rejected) == n - len(accepted) and len(rejected) >= n - 3,
          "%d requests beyond 1 running + 2 waiting: the rest get RESOURCE_EXHAUSTED" % n,
          [str(r[0]) for r in res])
    check(all(r[2] < 2.0 for r in rejected),
          "RESOURCE_EXHAUSTED comes promptly (slowest %.3f s)" %
          max([r[2] for r in rejected] or [0]))
    for r in accepted:
        if r[1]:
            r[1].cancel()

    # graceful drain: a stream in flight finishes, new work is refused
    time.sleep(0.3)
    t_drain = time.time()
    call = stub.Generate(greedy([1000 + i for i in range(32)], 200, ignore_eos=True), timeout=120)
    first = next(call)
    watch = ns.health_pb2_grpc.HealthStub(channel).Watch(ns.health_pb2.HealthCheckRequest(),
                                                          timeout=60)
    # the watch is established (its first status came) before the drain
    # starts: a call that reaches the server after SIGTERM is refused
    statuses = [next(watch).status]
    proc.send_signal(signal.SIGTERM)
    for m in watch:
        statuses.append(m.status)
        if m.status != ns.health_pb2.HealthCheckResponse.SERVING:
            break
    msgs, ended = [first], "OK"
    try:
        msgs += list(call)
    except grpc.RpcError as e:  # how it ended, with the server's own account below
        ended = "%s (%s) %.1f s after it was sent" % (e.code(), e.details(), time.time() - t_drain)
    check(statuses and statuses[-1] == ns.health_pb2.HealthCheckResponse.NOT_SERVING,
          "after SIGTERM Health.Watch reports NOT_SERVING", statuses)
    finished = check(msgs[-1].finish_reason == "length" and len(ids_of(msgs)) == 200,
                     "SIGTERM: the stream in flight finishes all its 200 tokens",
                     "%d tokens, ended %s" % (len(ids_of(msgs)), ended))
    try:
        rc = proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "killed after 40 s"
    check(rc == 0, "the drained server exits 0", rc)
    found = sanitizer_report(log)
    if not finished:
        log.seek(0)
        print("".join("    | " + line for line in log.readlines()[-12:]), end="")
    check(not found, "the drained server reports no sanitizer errors or leaks", found[:3])
    channel.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--metrics")
    ap.add_argument("--lmserve")
    ap.add_argument("--model")
    ap.add_argument("--logdir", default="/tmp")
    ap.add_argument("--quick", action="store_true", help="fewer prompts and streams (sanitizers)")
    ap.add_argument("--child-stream", type=int)
    args = ap.parse_args()
    if args.child_stream:
        return child_stream(args.server, args.child_stream)
    channel, stub = lc.connect(args.server)
    metrics = Metrics(args.metrics)
    tests = [
        ("health", lambda: test_health(channel)),
        ("model info", lambda: test_model_info(stub, args)),
        ("kv metrics", lambda: test_kv_metrics(metrics, args, info)),
        ("generate", lambda: test_generate_matches_cli(stub, args)),
        ("tokenize", lambda: test_tokenize(stub, args)),
        ("chat", lambda: test_chat(stub)),
        ("request ids", lambda: test_request_ids(stub, info)),
        ("bad inputs", lambda: test_bad_inputs(stub, channel, info, args)),
        ("cancel", lambda: test_cancel(stub, metrics, info)),
        ("killed client", lambda: test_killed_client(metrics, args, info)),
        ("deadline", lambda: test_deadline(stub, metrics, info)),
        ("concurrent", lambda: test_concurrent(stub, 32 if args.quick else 256, 8)),
        ("reflection", lambda: test_reflection(channel, args, args.server)),
        ("overload and drain", lambda: test_overload_and_drain(args, info)),
    ]
    info = None
    t0 = time.time()
    for name, fn in tests:
        print("# %s (at %.1f s)" % (name, time.time() - t0))
        sys.stdout.flush()
        try:
            r = fn()
            if name == "model info":
                info = r
        except Exception as e:  # a test that crashes is one failure, the rest still run
            check(False, "%s raised %s" % (name, type(e).__name__), e)
            if info is None:
                info = stub.GetModelInfo(pb.GetModelInfoRequest())
    channel.close()
    print("%s: %d failed" % (os.path.basename(__file__), failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

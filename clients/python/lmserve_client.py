#!/usr/bin/python3
"""lmserve_client.py - a short Python client for lmserve's gRPC API.

The Python code is generated from proto/lmserve/v1/lmserve.proto (and the
standard health and reflection protos) at run time with grpc_tools.protoc,
into a temporary directory, so nothing generated is kept in the tree.

    /usr/bin/python3 clients/python/lmserve_client.py generate "The capital of France is"
    /usr/bin/python3 clients/python/lmserve_client.py --server 127.0.0.1:50051 chat "Hi"
    /usr/bin/python3 clients/python/lmserve_client.py info
    /usr/bin/python3 clients/python/lmserve_client.py tokenize "Hello world"

As a module: `pb, pb_grpc = load_protos()` then `connect(address)`.
"""
import argparse
import atexit
import importlib
import os
import shutil
import sys
import tempfile

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto")
GRPC_PROTO = "/usr/share/grpc-proto"
# The standard protos are compiled under flat names: their Python modules
# would otherwise live in a package "grpc", which the grpcio package owns.
STD_PROTOS = {
    "health.proto": "grpc/health/v1/health.proto",
    "reflection_v1.proto": "grpc/reflection/v1/reflection.proto",
    "reflection_v1alpha.proto": "grpc/reflection/v1alpha/reflection.proto",
}

_modules = {}


def load_protos():
    """Generates and imports the Python modules once; returns a namespace
    with lmserve_pb2, lmserve_pb2_grpc, health_pb2, health_pb2_grpc,
    reflection_pb2 and reflection_pb2_grpc (v1), reflection_v1alpha_pb2
    and reflection_v1alpha_pb2_grpc."""
    if _modules:
        return _modules["ns"]
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="lmserve-pb-")
    atexit.register(shutil.rmtree, out, True)
    src = os.path.join(out, "src")
    os.mkdir(src)
    for flat, path in STD_PROTOS.items():
        shutil.copy(os.path.join(GRPC_PROTO, path), os.path.join(src, flat))
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", "-I" + PROTO_DIR, "-I" + src, "-I" + wkt,
            "--python_out=" + out, "--grpc_python_out=" + out,
            os.path.join(PROTO_DIR, "lmserve/v1/lmserve.proto")]
    args += [os.path.join(src, p) for p in STD_PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed on " + PROTO_DIR)
    sys.path.insert(0, out)

    class NS:
        pass

    ns = NS()
    ns.lmserve_pb2 = importlib.import_module("lmserve.v1.lmserve_pb2")
    ns.lmserve_pb2_grpc = importlib.import_module("lmserve.v1.lmserve_pb2_grpc")
    ns.health_pb2 = importlib.import_module("health_pb2")
    ns.health_pb2_grpc = importlib.import_module("health_pb2_grpc")
    ns.reflection_pb2 = importlib.import_module("reflection_v1_pb2")
    ns.reflection_pb2_grpc = importlib.import_module("reflection_v1_pb2_grpc")
    ns.reflection_v1alpha_pb2 = importlib.import_module("reflection_v1alpha_pb2")
    ns.reflection_v1alpha_pb2_grpc = importlib.import_module("reflection_v1alpha_pb2_grpc")
    _modules["ns"] = ns
    return ns


def connect(address):
    """A channel and a Generation stub for address ("host:port")."""
    ns = load_protos()
    channel = grpc.insecure_channel(address)
    return channel, ns.lmserve_pb2_grpc.GenerationStub(channel)


def generate_request(prompt, max_tokens=0, temperature=None, ignore_eos=False, **kw):
    """A GenerateRequest for a text prompt or a list of token ids."""
    pb = load_protos().lmserve_pb2
    req = pb.GenerateRequest(**kw)
    if isinstance(prompt, str):
        req.text = prompt
    else:
        req.token_ids.SetInParent()  # an empty list is still a token-id prompt
        req.token_ids.ids.extend(prompt)
    if temperature is not None:
        req.sampling.temperature = temperature
    req.stopping.max_tokens = max_tokens
    req.stopping.ignore_eos = ignore_eos
    return req


def main():
    ap = argparse.ArgumentParser(description="lmserve example client")
    ap.add_argument("--server", default="127.0.0.1:50051")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("command", choices=["generate", "chat", "info", "tokenize"])
    ap.add_argument("text", nargs="?", default="The capital of France is")
    a = ap.parse_args()
    ns = load_protos()
    pb = ns.lmserve_pb2
    channel, stub = connect(a.server)
    try:
        if a.command in ("generate", "chat"):
            if a.command == "generate":
                stream = stub.Generate(generate_request(a.text, a.max_tokens, a.temperature))
            else:
                req = pb.ChatRequest(messages=[pb.ChatMessage(role="user", content=a.text)])
                req.sampling.temperature = a.temperature
                req.stopping.max_tokens = a.max_tokens
                stream = stub.Chat(req)
            for msg in stream:
                sys.stdout.write(msg.text)
                sys.stdout.flush()
                if msg.finish_reason:
                    u = msg.usage
                    sys.stderr.write("\n[%s: %d prompt + %d completion tokens, TTFT %.1f ms]\n" % (
                        msg.finish_reason, u.prompt_tokens, u.completion_tokens,
                        u.time_to_first_token_seconds * 1e3))
        elif a.command == "info":
            print(stub.GetModelInfo(pb.GetModelInfoRequest()))
        else:
            print(list(stub.Tokenize(pb.TokenizeRequest(text=a.text)).token_ids))
    except grpc.RpcError as e:
        sys.stderr.write("%s: %s\n" % (e.code().name, e.details()))
        return 1
    finally:
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

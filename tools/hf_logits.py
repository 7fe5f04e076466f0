#!/usr/bin/env python3
"""hf_logits.py - Hugging Face transformers' own logits on the fixture models, as small JSON files.

  hf_logits.py --fixtures DIR --out OUTDIR [--models a,b,...] [--device cuda|cpu]

For every model directory under DIR (or only the named ones) it loads the
checkpoint with AutoModelForCausalLM.from_pretrained(dtype=<config.json's
torch_dtype>, attn_implementation="eager"), so the numbers are what a user
of transformers gets: computed in the checkpoint's dtype, on the GPU when
there is one. It runs the prompts that `tests/forward_compare.py prompts`
makes (lengths 1, 7, 64, 300; the same ids tests/hf_compare.sh feeds
lmserve) and writes OUTDIR/<model>.json with, per prompt:

  top_ids, top_logits  the 64 largest logits of the last prompt token, best first
  spread_logits        the logits at spread_ids (64 ids across the whole
                       vocabulary, the same for every prompt), so errors
                       away from the top show too
  logsumexp            of the whole last-token row (float64)
  greedy, greedy_gaps  16 greedy tokens, eos ignored (a plain argmax loop
                       over the KV cache, which is what generate(do_sample=False)
                       does without logits processors), and at each step the
                       gap between the two largest logits

and, to tell a stale file from a fresh one, the prompts, the sha256 of
config.json and of every model*.safetensors, the transformers and torch
versions, the device and the dtype. Floats are rounded to 6 significant
digits. Needs torch, transformers and the standard library only;
tests/hf_compare.py checks lmserve against these files.
"""

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM

FORMAT = 1
LENGTHS = "1,7,64,300"
GREEDY_STEPS = 16
N_TOP = 64
N_SPREAD = 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import forward_compare  # noqa: E402  (the prompt generator, standard library only)


def make_prompts(model_dir, lengths):
    """The prompts of `forward_compare.py prompts`, through its own code."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "prompts.json")
        forward_compare.cmd_prompts(argparse.Namespace(model=model_dir, out=path, lengths=lengths))
        with open(path) as f:
            return json.load(f)["prompts"]


def spread_ids(vocab):
    """N_SPREAD ids across [0, vocab): the first and the last id (where a
    tiled kernel's edge falls) and the rest drawn with a fixed seed, so they
    do not line up with any tile size."""
    rng = random.Random(20240501)
    inner = rng.sample(range(1, vocab - 1), N_SPREAD - 2)
    return [0] + sorted(inner) + [vocab - 1]


def r6(x):
    """A float rounded to 6 significant digits (keeps the JSON small)."""
    x = float(x)
    if not math.isfinite(x):
        raise SystemExit(f"hf_logits: non-finite logit {x}")
    return float(f"{x:.6g}")


def top2_gap(row):
    # row: [vocab] float32
    top = torch.topk(row, 2).values
    return float(top[0] - top[1])


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.machine()})"


def load_model(model_dir, dtype, dev):
    kwargs = {"attn_implementation": "eager", "output_loading_info": True}
    # transformers 4.56 renamed torch_dtype to dtype; older versions would
    # pass an unknown "dtype" on to the config and load float32.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
    res = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model, info = res if isinstance(res, tuple) else (res, {})
    # A weight the checkpoint lacks would be randomly initialised and the
    # fixture silently meaningless.
    bad = {k: v for k, v in dict(info).items()
           if v and (k in ("missing_keys", "unexpected_keys", "mismatched_keys") or "error" in k)}
    if bad:
        raise SystemExit(f"hf_logits: {model_dir}: loading reported {bad}")
    if model.dtype != dtype:
        raise SystemExit(f"hf_logits: {model_dir}: loaded as {model.dtype}, wanted {dtype}")
    return model.to(dev).eval()


def run_prompt(model, ids, dev, spread):
    """Last-token summary and the greedy continuation of one prompt."""
    out = model(input_ids=torch.tensor([ids], device=dev), use_cache=True)
    # logits: [1, T, vocab] in the model's dtype; one row as float32 (exact)
    row = out.logits[0, -1].float()
    top = torch.topk(row, N_TOP)
    # equal logits (common in bf16) by id, so top_ids[0] is argmax's first maximum
    best = sorted(zip(top.values.tolist(), top.indices.tolist()), key=lambda t: (-t[0], t[1]))
    res = {
        "n_tokens": len(ids),
        "top_ids": [int(i) for _, i in best],
        "top_logits": [r6(v) for v, _ in best],
        "spread_logits": [r6(v) for v in row[torch.tensor(spread, device=dev)].tolist()],
        "logsumexp": r6(torch.logsumexp(row.double(), 0)),
    }
    past, greedy, gaps = out.past_key_values, [], []
    for step in range(GREEDY_STEPS):
        nxt = int(torch.argmax(row))  # the first of equal maxima, as documented
        greedy.append(nxt)
        gaps.append(r6(top2_gap(row)))
        if step + 1 < GREEDY_STEPS:
            out = model(input_ids=torch.tensor([[nxt]], device=dev), past_key_values=past,
                        use_cache=True)
            past, row = out.past_key_values, out.logits[0, -1].float()
    res["greedy"], res["greedy_gaps"] = greedy, gaps
    return res


def write_fixture(path, fx):
    """JSON with one line per list, so a diff of two fixtures reads per prompt."""
    parts = []
    for k, v in fx.items():
        if k in ("prompts", "results"):
            body = ",\n".join("  " + json.dumps(x, separators=(",", ":")) for x in v)
            parts.append(f"{json.dumps(k)}: [\n{body}\n]")
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}")
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(parts) + "\n}\n")


def one_model(model_dir, dev):
    name = os.path.basename(os.path.normpath(model_dir))
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    dtype_name = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    if dtype_name not in DTYPES:
        raise SystemExit(f"hf_logits: {name}: unsupported torch_dtype {dtype_name}")
    vocab = cfg["vocab_size"]
    prompts = make_prompts(model_dir, LENGTHS)
    spread = spread_ids(vocab)
    model = load_model(model_dir, DTYPES[dtype_name], dev)
    results = []
    with torch.no_grad():
        for ids in prompts:
            results.append(run_prompt(model, ids, dev, spread))
    fx = {
        "format": FORMAT,
        "model": name,
        "architecture": (cfg.get("architectures") or ["?"])[0],
        "dtype": dtype_name,
        "vocab_size": vocab,
        "attn_implementation": model.config._attn_implementation,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "device": device_name(dev),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "config_sha256": forward_compare.sha256_file(os.path.join(model_dir, "config.json")),
        "weights_sha256": forward_compare.weight_hashes(model_dir),
        "greedy_steps": GREEDY_STEPS,
        "spread_ids": spread,
        "prompts": prompts,
        "results": results,
    }
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return fx


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", required=True, help="directory of model directories")
    ap.add_argument("--out", required=True, help="directory for <model>.json")
    ap.add_argument("--models", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--device", choices=("cuda", "cpu"),
                    default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("hf_logits: --device cuda but torch sees no GPU")
    dev = torch.device(a.device)
    # float32 matmuls in full precision (no TF32), torch's default, made
    # explicit so a site-wide setting cannot loosen the float32 fixtures.
    torch.set_float32_matmul_precision("highest")
    if not os.path.isdir(a.fixtures):
        raise SystemExit(f"hf_logits: {a.fixtures} is not a directory")
    if a.models:
        names = a.models.split(",")
    else:
        names = sorted(d for d in os.listdir(a.fixtures)
                       if os.path.isfile(os.path.join(a.fixtures, d, "config.json")))
    if not names:
        raise SystemExit(f"hf_logits: no model directories under {a.fixtures}")
    os.makedirs(a.out, exist_ok=True)
    for name in names:
        model_dir = os.path.join(a.fixtures, name)
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise SystemExit(f"hf_logits: {model_dir} has no config.json")
        fx = one_model(model_dir, dev)
        path = os.path.join(a.out, f"{name}.json")
        write_fixture(path, fx)
        r = fx["results"]
        print(f"{name}: {fx['dtype']} on {fx['device']}, {len(r)} prompts, argmax "
              f"{[x['top_ids'][0] for x in r]}, {os.path.getsize(path)} bytes -> {path}",
              flush=True)


if __name__ == "__main__":
    main()

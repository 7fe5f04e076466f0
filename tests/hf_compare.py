#!/usr/bin/env python3
"""hf_compare.py - compare lmserve's forward pass against Hugging Face transformers' logits.

  hf_compare.py check --fixture F.json --ours OURS.json --model DIR [--prompts PROMPTS.json]
                      [--ours-dtype float32|bfloat16|float16]

F.json is a fixture from tools/hf_logits.py (tests/data/hf/<model>.json):
transformers' own forward pass, computed in the checkpoint's dtype. OURS.json
is forward_dump's output for the same prompts ("last_logits": [[vocab
floats] per prompt], "greedy": [[ids] per prompt]); PROMPTS.json, when
given, must hold the prompts the fixture was made from. --ours-dtype is
the precision lmserve computed in: float32 (the default) for the CPU
backend, bfloat16 for the CUDA backend. Standard library only.

First the fixture must belong to DIR as it is now: the sha256 of config.json
and of every model*.safetensors must match what the fixture recorded (else
"stale fixture: regenerate with tools/hf_logits.py"). Then, per prompt, one
line:
  (a) normalized error ||ours - hf|| / ||hf|| over the fixture's 64 largest
      logits and, separately, over its 64 ids spread across the vocabulary,
      and |lse(ours) - lse(hf)| / |lse(hf)| (at least 1) of the whole row's
      log-sum-exp, each below REL_ERR[dtype], dtype the coarser of the
      fixture's and --ours-dtype;
  (b) ours' argmax is the fixture's, unless the fixture's top-1/top-2 gap is
      a near tie (below NEAR_TIE[dtype] * the largest stored |logit|);
  (c) the greedy continuations agree up to the first divergence, and the
      fixture's gap at that step is a near tie (reported, not a failure;
      the sequences are not compared past it).
Exits 1 if any check failed.

Thresholds. lmserve's CPU backend computes in float32 from the exactly
widened weights whatever the checkpoint dtype; transformers computes in the
checkpoint's dtype, rounding every op's output (and the logits themselves)
to it. So the difference is transformers' own rounding:
  float32   ~1e-6 (float32 summation order, and the fixture's 6 significant
            digits); REL_ERR 1e-4 leaves 100x room, and missing llama3 RoPE
            scaling or a wrong rope_theta (>= 8e-3, see forward_compare.py)
            still fails by far. NEAR_TIE 1e-3 of max|logit| (~0.035 here),
            as in forward_compare.py.
  bfloat16  8 significant bits: logits of magnitude 16..64 are rounded to
            steps of 0.125..0.25. Measured with an emulation of transformers'
            bf16 numerics against lmserve's float32 CPU backend on all the
            bf16 fixtures: top-64 error 2e-3..5e-3, spread 5e-3..1.5e-2, lse
            <= 6e-3, single logits off by up to 0.37. REL_ERR 3e-2; NEAR_TIE
            2e-2 of max|logit| (~0.7, twice the largest single-logit error,
            since a gap is the difference of two); bf16 ties (gap 0) are
            common and are near ties.
  float16   11 significant bits, 8x finer than bf16: measured top-64 3e-4..7e-4,
            spread 8e-4..1.7e-3, lse <= 3.4e-4, single logits <= 0.05.
            REL_ERR 5e-3; NEAR_TIE 3e-3 of max|logit| (~0.1).
The CUDA backend keeps matrices (f16 and f32 ones converted), activations
and the KV cache in bf16, with f32 accumulation and f32 logits, so against
every fixture it is held to the bf16 limits: an emulation of it measured
top-64 1e-3..6e-3, spread 1.5e-3..1.9e-2 against all 13 fixtures.
The bf16 and f16 limits catch gross errors (wrong RoPE layout, a missing
bias or norm, a wrong layer) against an implementation no one here wrote;
fine precision is the float32 fixtures' job (and forward_compare.py's).
"""

import argparse
import json
import math
import os
import sys

import forward_compare  # tests/: the shared hashing and greedy check

FORMAT = 1
REL_ERR = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}
COARSENESS = ["float32", "float16", "bfloat16"]  # finest first
NEAR_TIE = {"float32": 1e-3, "bfloat16": 2e-2, "float16": 3e-3}
STALE = "stale fixture: regenerate with tools/hf_logits.py"


def stale_reason(fx, model_dir):
    """None if config.json and the weight files hash as the fixture recorded."""
    cfg = os.path.join(model_dir, "config.json")
    if not os.path.isfile(cfg):
        return f"{model_dir} has no config.json"
    if forward_compare.sha256_file(cfg) != fx.get("config_sha256"):
        return "config.json differs"
    have = forward_compare.weight_hashes(model_dir)
    want = fx.get("weights_sha256") or {}
    if set(have) != set(want):
        return f"weight files {sorted(have)} != the fixture's {sorted(want)}"
    changed = [n for n in sorted(want) if have[n] != want[n]]
    if changed:
        return f"{', '.join(changed)} differ"
    return None


def rel_err(ours, ref):
    """||ours - ref|| / ||ref||; NaN (which fails every limit) if ours has a NaN."""
    den = math.sqrt(sum(y * y for y in ref))
    num = math.sqrt(sum((x - y) ** 2 for x, y in zip(ours, ref)))
    return num / den if den > 0 else num


def logsumexp(row):
    m = max(row)
    if not math.isfinite(m):
        return m
    return m + math.log(sum(math.exp(x - m) for x in row))


def argmax(row):
    best = 0
    for i, x in enumerate(row):
        if x > row[best]:
            best = i
    return best


def check_prompt(fx, p, o, og, limit, tie_frac):
    """(ok, message) for prompt p: o is ours' last-token row, og ours' greedy ids."""
    r = fx["results"][p]
    top_ids, top, spread = r["top_ids"], r["top_logits"], r["spread_logits"]
    msgs, ok = [], True
    e_top = rel_err([o[i] for i in top_ids], top)
    e_spread = rel_err([o[i] for i in fx["spread_ids"]], spread)
    lse = logsumexp(o)
    e_lse = abs(lse - r["logsumexp"]) / max(abs(r["logsumexp"]), 1.0)
    errs_ok = e_top < limit and e_spread < limit and e_lse < limit  # False for NaN
    ok &= errs_ok
    msgs.append(f"err top-64 {e_top:.1e}, spread-64 {e_spread:.1e}, lse {e_lse:.1e} "
                f"(limit {limit:.0e})")
    tol = tie_frac * max(abs(x) for x in top + spread)
    gap = top[0] - top[1]
    a = argmax(o)
    if a == top_ids[0]:
        msgs.append(f"argmax {a}")
    elif gap < tol:
        msgs.append(f"argmax near-tie: gap {gap:.2g} < {tol:.2g} (hf {top_ids[0]}, ours {a})")
    else:
        msgs.append(f"argmax differs: hf {top_ids[0]}, ours {a}, gap {gap:.3g} >= {tol:.2g}")
        ok = False
    good, msg = forward_compare.greedy_check(r["greedy"], og, r["greedy_gaps"], tol, "hf")
    msgs.append(msg)
    ok &= good
    return ok, "; ".join(msgs)


def cmd_check(a):
    with open(a.fixture) as f:
        fx = json.load(f)
    name = os.path.basename(os.path.normpath(a.model))
    if fx.get("format") != FORMAT:
        print(f"FAIL {name}: fixture format {fx.get('format')}, expected {FORMAT}: {STALE}")
        return 1
    why = stale_reason(fx, a.model)
    if why:
        print(f"FAIL {name}: {STALE} ({why})")
        return 1
    if a.prompts:
        with open(a.prompts) as f:
            prompts = json.load(f)["prompts"]
        if prompts != fx["prompts"]:
            print(f"FAIL {name}: the prompts differ from those the fixture was made from: {STALE}")
            return 1
    dtype = fx["dtype"]
    if dtype not in REL_ERR:
        print(f"FAIL {name}: fixture dtype {dtype} has no limits here")
        return 1
    # the difference is as coarse as the coarser of the two computations
    limits_of = max(dtype, a.ours_dtype, key=COARSENESS.index)
    limit, tie_frac = REL_ERR[limits_of], NEAR_TIE[limits_of]
    try:
        with open(a.ours) as f:
            ours = json.load(f)
    except ValueError as e:  # forward_dump writes a non-finite logit as nan/inf
        print(f"FAIL {name}: {a.ours} is not JSON ({e}); a NaN or infinite logit?")
        return 1
    n, vocab = len(fx["results"]), fx["vocab_size"]
    rows, greedy = ours.get("last_logits", []), ours.get("greedy", [])
    if len(rows) != n or len(greedy) != n:
        print(f"FAIL {name}: ours has {len(rows)} logit rows and {len(greedy)} greedy rows, "
              f"the fixture {n} prompts")
        return 1
    print(f"# {name}: fixture of {fx.get('model')} by transformers {fx['transformers_version']}, "
          f"torch {fx['torch_version']}, {dtype} on {fx['device']}; ours in {a.ours_dtype}: "
          f"{limits_of} limits")
    failures = 0
    for p in range(n):
        r = fx["results"][p]
        if len(rows[p]) != vocab:
            ok, msg = False, f"logits length {len(rows[p])} != {vocab}"
        else:
            ok, msg = check_prompt(fx, p, rows[p], greedy[p], limit, tie_frac)
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name} prompt {p} ({r['n_tokens']} tokens): {msg}")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--fixture", required=True, help="tests/data/hf/<model>.json")
    c.add_argument("--ours", required=True, help="forward_dump output")
    c.add_argument("--model", required=True, help="the model directory")
    c.add_argument("--prompts", help="the prompts given to forward_dump")
    c.add_argument("--ours-dtype", choices=COARSENESS, default="float32",
                   help="the precision lmserve computed in (CPU backend: float32, CUDA: bfloat16)")
    a = ap.parse_args()
    sys.exit(cmd_check(a))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# tests/cli_test.sh - the lmserve command line as a user runs it: streamed
# generation on the demo model, tokenize round trips, and clear one-line
# errors (exit 1) for broken model directories and bad requests.
#
# usage: tests/cli_test.sh BIN/lmserve FIXTURES_DIR
set -uo pipefail
lmserve=$(realpath "$1")
fixtures=$(realpath "$2")
py=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
ok() { echo "ok - $*"; }
bad() {
  echo "not ok - $*"
  fails=$((fails + 1))
}
check() { # check NAME CONDITION-COMMAND...
  local name=$1
  shift
  if "$@"; then ok "$name"; else bad "$name"; fi
}

# --- generation on the demo model, from another working directory ---
cd "$tmp"
"$lmserve" generate --prompt "The capital of France is" --max-tokens 12 --temperature 0 >g1.txt 2>g1.err
check "generate runs on the demo model from any directory" test $? -eq 0 -a -s g1.txt
"$lmserve" generate --prompt "The capital of France is" --max-tokens 12 --temperature 0 >g2.txt 2>&1
check "greedy generation is deterministic" cmp -s g1.txt g2.txt
"$lmserve" generate --prompt "The capital of France is" --max-tokens 12 --temperature 1e-40 >t1.txt
check "a temperature too small to invert is greedy" cmp -s g1.txt t1.txt
"$lmserve" generate --prompt "The capital of France is" --max-tokens 12 --temperature 0 \
  --cpu-mapped-weights >m1.txt
check "weights from the file mapping give the same tokens" cmp -s g1.txt m1.txt
"$lmserve" generate --prompt "Hello" --max-tokens 16 --temperature 0.8 --top-p 0.9 --seed 7 >s1.txt
"$lmserve" generate --prompt "Hello" --max-tokens 16 --temperature 0.8 --top-p 0.9 --seed 7 >s2.txt
check "a seed makes sampling repeatable" cmp -s s1.txt s2.txt
"$lmserve" generate --prompt "Hello" --max-tokens 16 --temperature 0.8 --top-k 40 --seed 7 --json >j.txt
check "--json prints one object per token with id and text" $py -c '
import json, sys
lines = open("j.txt").read().splitlines()
objs = [json.loads(l) for l in lines]
assert len(objs) >= 1 and all(set(o) == {"id", "text"} for o in objs), objs
' 
"$lmserve" generate --prompt "Hello" --max-tokens 20 --temperature 0 --ignore-eos --json >j2.txt
"$lmserve" generate --prompt "Hello" --max-tokens 20 --temperature 0 --ignore-eos >p2.txt
check "--json texts joined equal the plain stream; ids decode to it" $py -c "
import json, subprocess
objs = [json.loads(l) for l in open('j2.txt').read().splitlines()]
text = ''.join(o['text'] for o in objs)
plain = open('p2.txt', encoding='utf-8').read()
assert text + '\n' == plain, (text, plain)
ids = [o['id'] for o in objs if o['id'] >= 0]
assert len(ids) == 20, len(ids)
dec = subprocess.run(['$lmserve', 'tokenize', '--decode'], input=json.dumps(ids).encode(), capture_output=True, check=True).stdout.decode()
assert dec == text, (dec, text)
"
"$lmserve" generate --prompt "Hello" --max-tokens 20 --temperature 0 --ignore-eos \
  --stop "$($py -c "print(open('p2.txt', encoding='utf-8').read()[6:9], end='')")" >stop.txt
check "--stop ends the text before the first match of the stop string" $py -c "
full = open('p2.txt', encoding='utf-8').read()
got = open('stop.txt', encoding='utf-8').read()
assert got == full[:full.index(full[6:9])] + '\n', (got, full)
"
first=$($py -c "import json; print(json.loads(open('j2.txt').readline())['id'])")
"$lmserve" generate --prompt "Hello" --max-tokens 20 --temperature 0 --ignore-eos --json \
  --stop-token-id "$first" >sid.txt
"$lmserve" generate --prompt "Hello" --max-tokens 20 --temperature 0 --ignore-eos --json \
  --stop-token-id "$first" --min-tokens 5 >sidmin.txt
check "--stop-token-id stops at the id; --min-tokens 5: not drawn before 5 tokens" $py -c "
import json
ids = lambda f: [json.loads(l)['id'] for l in open(f).read().splitlines()]
assert ids('sid.txt') == [], ids('sid.txt')
m = ids('sidmin.txt')
assert len(m) >= 5 and $first not in m, m  # banned within min_tokens, as vLLM masks it
"
if [ -n "${LMSERVE_NODE_MODULES:-}" ]; then
  chat='{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]}'
  rendered=$(NODE_PATH="$LMSERVE_NODE_MODULES" node -e '
const fs = require("fs"), { Template } = require("@huggingface/jinja");
const cfg = JSON.parse(fs.readFileSync(process.argv[1] + "/tokenizer_config.json", "utf8"));
const req = JSON.parse(process.argv[2]);
process.stdout.write(new Template(cfg.chat_template).render({ ...req, add_generation_prompt: true,
  bos_token: cfg.bos_token, eos_token: cfg.eos_token }) + "#");
' "$(dirname "$lmserve")/../models/demo" "$chat")
  echo "$chat" | "$lmserve" generate --chat --max-tokens 12 --temperature 0 --ignore-eos --json >chat.txt
  "$lmserve" generate --prompt "${rendered%#}" --max-tokens 12 --temperature 0 --ignore-eos \
    --json >chat_ref.txt
  check "--chat renders as @huggingface/jinja does: same tokens as the rendered prompt" \
    bash -c '[ -s chat.txt ] && cmp -s chat.txt chat_ref.txt'
fi

# --- bench: every workload runs and yields exactly the tokens it asks for ---
"$lmserve" bench --json --threads 1 --prompt-len 8 --output-len 4 --prefix-len 64 --long-len 128 \
  --long-decodes 8 --long-decode-len 32 --max-batched-tokens 16 >bench.json 2>bench.err
check "bench --json: all workloads, their output token totals, the four gates, the decodes' ITL alone" $py -c '
import json
rows = [json.loads(l) for l in open("bench.json").read().splitlines()]
work = {(r["workload"], r["concurrency"]): r for r in rows if "workload" in r}
assert all(work[("fixed", c)]["output_tokens"] == c * 4 for c in (1, 8, 32, 64)), work
assert work[("prefix-cold", 1)]["output_tokens"] == 4 * 8 and work[("prefix-warm", 1)]["output_tokens"] == 7 * 8
assert work[("prefix-warm", 1)]["prefix_hit_rate"] >= 64 / 128 - 1e-6, work[("prefix-warm", 1)]  # the whole shared prefix
total = [r["output_tokens_total"] for r in rows if "output_tokens_total" in r]
assert total == [4 * 105 + 88 + 3 + 4 * 2], total  # long prompts alone twice and beside decodes once, 4 arrivals
arrive = work[("long-arrive", 13)]  # 4 short requests beside the decodes and a long prompt
assert arrive["requests"] == 4 and arrive["output_tokens"] == 8 and arrive["ttft_ms"][0] > 0, arrive
assert len([r for r in rows if "gate" in r]) == 4, rows
itl = [r for r in rows if "long_decode_itl_p50_ms" in r]
assert len(itl) == 1 and all(v > 0 for v in itl[0]["long_decode_itl_p50_ms"]), itl  # before and after the long prompt
assert itl[0]["long_decode_prompt_len"] == 32, itl
assert itl[0]["long_decodes_replaced"] > 0 and itl[0]["long_waiting_most"] >= 0, itl  # a steady population
assert -10 < itl[0]["long_prompt_work_beside_over_alone"] < 10, itl  # W / A, an estimate
assert itl[0]["long_arrivals_during_prefill"] in (True, False), itl
assert len(itl[0]["long_alone_ttft_ms"]) == 2 and min(itl[0]["long_alone_ttft_ms"]) > 0, itl  # before and after
assert all(r["layered_steps"] >= 0 for r in work.values()), work
'

# --- tokenize ---
printf 'Grüße, 世界! 👩‍👩‍👧 x=42\n' >t.txt
"$lmserve" tokenize <t.txt >ids.json
"$lmserve" tokenize --decode <ids.json >back.txt
check "tokenize then --decode gives the text back" cmp -s t.txt back.txt
"$lmserve" tokenize --model "$fixtures/llama31-bf16" <t.txt >ids_llama.json
check "a Llama 3.1 tokenizer adds <|begin_of_text|> (128000)" grep -q '^\[128000, ' ids_llama.json
echo '[1, "x"]' | "$lmserve" tokenize --decode >/dev/null 2>err.txt
check "decode of a non-id says which element is wrong" grep -q "element 1" err.txt

# --- bad requests ---
"$lmserve" generate --prompt "" >/dev/null 2>err.txt
rc=$?
check "an empty prompt is refused (exit 1) with a message" test $rc -eq 1 -a "$(wc -l <err.txt)" -eq 1
"$lmserve" generate --prompt "hi" --max-tokens 1000000 >/dev/null 2>err.txt
rc=$?
check "prompt + max tokens over the context is refused and says so" \
  grep -q "exceeds the model's context" err.txt
"$lmserve" generate --prompt "hi" --temperature -1 >/dev/null 2>err.txt
check "a negative temperature is refused naming the flag" grep -q -- "--temperature" err.txt
"$lmserve" generate --prompt "hi" --kv-cache-dtype f16 >/dev/null 2>err.txt
rc=$?
check "an unknown KV cache dtype is refused (exit 1, one line)" test $rc -eq 1 -a "$(wc -l <err.txt)" -eq 1
check "the refusal names the KV cache dtypes" grep -q "expected auto, bf16, f32 or fp8_e5m2" err.txt
"$lmserve" generate --prompt "hi" --gemm fast >/dev/null 2>err.txt
rc=$?
check "an unknown --gemm is refused (exit $rc, one line) naming the choices" \
  test $rc -ne 0 -a "$(wc -l <err.txt)" -eq 1 -a -n "$(grep 'cublaslt or mma' err.txt)"
"$lmserve" bench --max-decode-slowdown 0.5 >/dev/null 2>err.txt
rc=$?
check "a decode slowdown below 1 is refused (exit $rc, one line) saying what it takes" \
  test $rc -ne 0 -a "$(wc -l <err.txt)" -eq 1 -a -n "$(grep -- '--max-decode-slowdown needs 0 (no limit)' err.txt)"
"$lmserve" bench --layered-prefill maybe >/dev/null 2>err.txt
rc=$?
check "--layered-prefill takes on or off (exit $rc, one line)" \
  test $rc -ne 0 -a "$(wc -l <err.txt)" -eq 1 -a -n "$(grep -- '--layered-prefill takes on or off' err.txt)"
"$lmserve" generate --prompt "The capital" --max-tokens 4 --gemm mma --json >gemm.txt 2>err.txt
check "--gemm mma (a CUDA choice) leaves the CPU backend generating" \
  test "$(grep -c '"id"' gemm.txt)" -eq 4
for kvd in f32 bf16 fp8_e5m2; do
  "$lmserve" generate --prompt "The capital" --max-tokens 8 --kv-cache-dtype $kvd --json >kv_$kvd.txt 2>err.txt
  check "generate with a $kvd KV cache streams 8 tokens" test "$(grep -c '"id"' kv_$kvd.txt)" -eq 8
done

# --- broken model directories: one line on stderr naming file and field ---
expect_load_error() { # NAME DIR PATTERN
  local out rc
  out=$("$lmserve" generate --model "$2" --prompt hi --max-tokens 1 2>&1 >/dev/null)
  rc=$?
  if [ $rc -eq 1 ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] && printf '%s' "$out" | grep -q -- "$3"; then
    ok "$1: $out"
  else
    bad "$1 (exit $rc): $out"
  fi
}
src="$fixtures/qwen3-bf16"
fresh() { rm -rf "$tmp/m"; cp -r "$src" "$tmp/m"; }

fresh
rm "$tmp/m/config.json"
expect_load_error "missing config.json" "$tmp/m" "config.json"
fresh
truncate -s 1000 "$tmp/m/model.safetensors"
expect_load_error "truncated weights" "$tmp/m" "model.safetensors"
fresh
$py - "$tmp/m/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["num_key_value_heads"] = 3; json.dump(c, open(sys.argv[1], "w"))
PY
expect_load_error "kv heads not dividing heads" "$tmp/m" "num_key_value_heads"
fresh
$py - "$tmp/m/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["architectures"] = ["GPT2LMHeadModel"]; json.dump(c, open(sys.argv[1], "w"))
PY
expect_load_error "unknown architecture" "$tmp/m" "GPT2LMHeadModel"
fresh
echo '{"hidden_size": ' >"$tmp/m/config.json"
expect_load_error "config.json that is not JSON" "$tmp/m" "config.json"
# rewrite the safetensors header: drop a tensor, or swap a tensor's shape
edit_header() { # FILE PYTHON-EXPR-ON-h
  $py - "$1" "$2" <<'PY'
import json, struct, sys
path, expr = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
n = struct.unpack("<Q", data[:8])[0]
h = json.loads(data[8:8 + n])
exec(expr)
hb = json.dumps(h).encode()
hb += b" " * (-len(hb) % 8)
open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + data[8 + n:])
PY
}
fresh
edit_header "$tmp/m/model.safetensors" 'del h["model.layers.1.mlp.up_proj.weight"]'
expect_load_error "missing tensor" "$tmp/m" "model.layers.1.mlp.up_proj.weight"
fresh
# gate_proj is [intermediate, hidden]: not square, so reversed it disagrees
edit_header "$tmp/m/model.safetensors" 't = h["model.layers.0.mlp.gate_proj.weight"]; t["shape"] = t["shape"][::-1]'
expect_load_error "tensor shape disagreeing with config" "$tmp/m" "gate_proj.weight"
fresh
edit_header "$tmp/m/model.safetensors" 'h["model.norm.weight"]["data_offsets"][1] += 10**9'
expect_load_error "offsets past the end of the file" "$tmp/m" "model.norm.weight"
fresh
printf '\xff\xff\xff\xff\xff\xff\xff\x7f' | dd of="$tmp/m/model.safetensors" bs=1 seek=0 conv=notrunc status=none
expect_load_error "header length beyond the file" "$tmp/m" "model.safetensors"

echo "$fails failed"
[ $fails -eq 0 ]

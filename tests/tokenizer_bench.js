#!/usr/bin/env node
// tokenizer_bench.js - the official library's side of tokenizer_bench.sh:
// same chunks as tokenizer_bench.c, encoded one after the other.
//   node tests/tokenizer_bench.js TOKENIZER_DIR TEXT_FILE [CHUNK_BYTES]
'use strict';
const fs = require('fs');
const path = require('path');
const NM = path.resolve(process.env.LMSERVE_NODE_MODULES || path.join(__dirname, '..', 'node_modules'));
const { Tokenizer } = require(path.join(NM, 'tokenizers'));
(async () => {
  const [dir, file, chunkArg] = process.argv.slice(2);
  const chunk = Number(chunkArg || 65536);
  const buf = fs.readFileSync(file);
  const chunks = [];
  for (let at = 0; at < buf.length;) {
    let end = Math.min(at + chunk, buf.length);
    while (end < buf.length && buf[end - 1] !== 0x0a) end++;
    chunks.push(buf.subarray(at, end).toString('utf8'));
    at = end;
  }
  let t0 = process.hrtime.bigint();
  const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const load = Number(process.hrtime.bigint() - t0) / 1e9;
  let n = 0;
  t0 = process.hrtime.bigint();
  for (const c of chunks) n += (await tok.encode(c, null, { addSpecialTokens: false })).getIds().length;
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`official: ${(buf.length / dt / 1e6).toFixed(2)} MB/s (${buf.length} bytes, ${n} tokens, ${dt.toFixed(3)} s; load ${load.toFixed(2)} s)`);
})();

#!/usr/bin/env node
// lmserve_client.js - a short Node client for lmserve's gRPC API, built from
// proto/lmserve/v1/lmserve.proto at run time with @grpc/proto-loader.
//
//   node clients/node/lmserve_client.js generate "The capital of France is"
//   node clients/node/lmserve_client.js --server 127.0.0.1:50051 chat "Hi"
//   node clients/node/lmserve_client.js info
//
// As a module: `const { connect } = require('./lmserve_client')`, then
// `const { client, health } = connect(address)`.
'use strict';
const path = require('path');

const root = path.resolve(__dirname, '..', '..');
const modules = process.env.LMSERVE_NODE_MODULES || path.join(root, 'node_modules');
const grpc = require(path.join(modules, '@grpc/grpc-js'));
const protoLoader = require(path.join(modules, '@grpc/proto-loader'));

const LOADER_OPTIONS = {
  keepCase: true, // field names as in the .proto (max_tokens, not maxTokens)
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [path.join(root, 'proto'), '/usr/share/grpc-proto', '/usr/include'],
};

let loaded = null;

// The package objects for lmserve.v1 and grpc.health.v1.
function load() {
  if (!loaded) {
    const def = protoLoader.loadSync(
      ['lmserve/v1/lmserve.proto', 'grpc/health/v1/health.proto'],
      LOADER_OPTIONS,
    );
    loaded = grpc.loadPackageDefinition(def);
  }
  return loaded;
}

// A Generation client and a Health client on one channel to address.
function connect(address) {
  const pkg = load();
  const client = new pkg.lmserve.v1.Generation(address, grpc.credentials.createInsecure());
  const health = new pkg.grpc.health.v1.Health(address, grpc.credentials.createInsecure(), {
    channelOverride: client.getChannel(),
  });
  return { client, health, grpc };
}

// Collects a server stream: resolves with its messages, rejects with the
// gRPC error (err.code, err.details).
function collect(stream) {
  return new Promise((resolve, reject) => {
    const msgs = [];
    stream.on('data', (m) => msgs.push(m));
    stream.on('error', reject);
    stream.on('end', () => resolve(msgs));
  });
}

// Unary call as a promise.
function unary(client, method, req, options = {}) {
  return new Promise((resolve, reject) => {
    client[method](req, options, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

async function main(argv) {
  let server = '127.0.0.1:50051';
  let maxTokens = 64;
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--server') server = argv[++i];
    else if (argv[i] === '--max-tokens') maxTokens = Number(argv[++i]);
    else rest.push(argv[i]);
  }
  const [command = 'generate', text = 'The capital of France is'] = rest;
  const { client } = connect(server);
  const params = { sampling: { temperature: 0 }, stopping: { max_tokens: maxTokens } };
  try {
    if (command === 'generate' || command === 'chat') {
      const stream =
        command === 'generate'
          ? client.Generate({ text, ...params })
          : client.Chat({ messages: [{ role: 'user', content: text }], ...params });
      stream.on('data', (m) => {
        process.stdout.write(m.text);
        if (m.finish_reason) process.stderr.write(`\n[${m.finish_reason}]\n`);
      });
      await collect(stream);
    } else if (command === 'info') {
      console.log(await unary(client, 'GetModelInfo', {}));
    } else if (command === 'tokenize') {
      console.log(JSON.stringify((await unary(client, 'Tokenize', { text })).token_ids));
    } else {
      throw new Error(`unknown command ${command} (generate, chat, info, tokenize)`);
    }
  } catch (e) {
    process.stderr.write(`${e.code !== undefined ? grpc.status[e.code] + ': ' : ''}${e.details || e.message}\n`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

module.exports = { load, connect, collect, unary, grpc };

if (require.main === module) main(process.argv.slice(2));

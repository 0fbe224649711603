// A real SOFARPC peer (npm sofa-rpc-node, bolt over sofa-bolt-node) for the bolt tests.
//
//   node bolt_peer.js server PORT
//     serves com.example.Hello (version 1.0): sayHi(name) -> "hi " + name,
//     slow(ms) -> "slept" after ms; prints "ready", then one line "connections N" each time
//     a connection is accepted (N: accepted so far).
//   node bolt_peer.js load HOST:PORT REQUESTS CONNECTIONS [METHOD]
//     REQUESTS concurrent sayHi calls spread over CONNECTIONS clients (one connection
//     each); prints one JSON line {ok, failed, errors}.
//   node bolt_peer.js call HOST:PORT INTERFACE METHOD ARGS_JSON [TIMEOUT_MS]
//     one call; prints {"result": ...} or {"error": message, "ms": elapsed}.
'use strict';

const { RpcServer } = require('sofa-rpc-node').server;
const { RpcClient } = require('sofa-rpc-node').client;

const quiet = {
  info() {}, warn() {}, debug() {}, error() {},
};

async function server(port) {
  const s = new RpcServer({ logger: quiet, port: Number(port) });
  s.addService({ interfaceName: 'com.example.Hello', version: '1.0' }, {
    async sayHi(name) { return 'hi ' + name; },
    async slow(ms) {
      await new Promise(r => setTimeout(r, ms));
      return 'slept';
    },
  });
  let accepted = 0;
  s.on('connection', () => {
    accepted += 1;
    console.log('connections ' + accepted);
  });
  await s.start();
  console.log('ready');
}

function consumer(addr, iface) {
  const client = new RpcClient({ logger: quiet });
  return client.createConsumer({
    interfaceName: iface,
    version: '1.0',
    serverHost: addr,
  });
}

async function load(addr, requests, connections) {
  const consumers = [];
  for (let i = 0; i < Number(connections); i++) {
    const c = consumer(addr, 'com.example.Hello');
    await c.ready();
    consumers.push(c);
  }
  let ok = 0;
  let failed = 0;
  const errors = [];
  const calls = [];
  for (let i = 0; i < Number(requests); i++) {
    const c = consumers[i % consumers.length];
    calls.push(c.invoke('sayHi', [ 'n' + i ], { responseTimeout: 10000 }).then(r => {
      if (r === 'hi n' + i) ok += 1;
      else { failed += 1; errors.push('wrong answer ' + r + ' to n' + i); }
    }, e => { failed += 1; errors.push(String(e.message)); }));
  }
  await Promise.all(calls);
  console.log(JSON.stringify({ ok, failed, errors: errors.slice(0, 5) }));
}

async function call(addr, iface, method, args, timeout) {
  const c = consumer(addr, iface);
  await c.ready();
  const started = Date.now();
  try {
    const result = await c.invoke(method, JSON.parse(args), {
      responseTimeout: Number(timeout || 10000),
    });
    console.log(JSON.stringify({ result }));
  } catch (e) {
    console.log(JSON.stringify({ error: String(e.message), ms: Date.now() - started }));
  }
}

const [ mode, ...rest ] = process.argv.slice(2);
const run = { server, load, call }[mode];
if (!run) {
  console.error('usage: bolt_peer.js server|load|call ...');
  process.exit(2);
}
run(...rest).then(() => {
  if (mode !== 'server') process.exit(0);
}, e => {
  console.error(e);
  process.exit(1);
});

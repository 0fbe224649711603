// A real dubbo provider and consumer (npm sofa-rpc-node speaking npm dubbo-remoting, dubbo2
// framing with hessian2) for the dubbo tests through two sidecars.
//
//   node dubbo_peer.js server PORT TAG
//     serves org.example.Greeter at versions 1.0.0 and 2.0.0:
//       sayHello(name) -> TAG + " hello " + name
//       whoami()       -> JSON {tag, version, group, trace} of the attachments as they arrived
//       delayed(ms, i) -> "d" + i, after ms (so answers leave in another order than requests
//                         came; a string: dubbo-remoting 2.1.4 closes the socket on a result 0)
//       hang()         -> never answers (a silent provider, on a connection that serves others)
//     prints "ready", then one line "connections N" each time a connection is accepted.
//   node dubbo_peer.js load HOST:PORT REQUESTS CONNECTIONS
//     REQUESTS concurrent delayed((i * 7) % 50, i) calls spread over CONNECTIONS consumers (one
//     connection each); prints {ok, failed, errors, inOrder}: ok counts answers "d" + their
//     own i, inOrder whether they completed in the order they were sent.
//   node dubbo_peer.js call HOST:PORT INTERFACE VERSION GROUP METHOD ARGS_JSON [TIMEOUT_MS]
//     one call (attachment trace=node-7); prints {"result": ...} or {"error": message, "ms"}.
//   node dubbo_peer.js hang HOST:PORT INTERFACE CALLS
//     on ONE connection, hang() and CALLS sayHello calls at once; prints
//     {hang: {error, ms}, ok, failed, errors}.
'use strict';

const { RpcServer } = require('sofa-rpc-node').server;
const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('dubbo-remoting');

const quiet = { info() {}, warn() {}, debug() {}, error() {} };

// The request reaches a method as `this.req` (sofa-rpc-node calls it with the context).
class Server extends RpcServer {
  createContext(req) {
    return { req };
  }
}

async function server(port, tag) {
  const s = new Server({ logger: quiet, port: Number(port), protocol });
  for (const version of [ '1.0.0', '2.0.0' ]) {
    s.addService({ interfaceName: 'org.example.Greeter', version }, {
      async sayHello(name) { return tag + ' hello ' + name; },
      async whoami() {
        const p = this.req.data.requestProps || {};
        return JSON.stringify({ tag, version: p.version, group: p.group, trace: p.trace });
      },
      async delayed(ms, i) {
        await new Promise(r => setTimeout(r, ms));
        return 'd' + i;
      },
      async hang() { await new Promise(() => {}); },
    });
  }
  let accepted = 0;
  s.on('connection', () => {
    accepted += 1;
    console.log('connections ' + accepted);
  });
  await s.start();
  console.log('ready');
}

async function consumer(addr, iface, version, group) {
  const client = new RpcClient({ logger: quiet, protocol });
  const c = client.createConsumer({ interfaceName: iface, version, group, serverHost: addr });
  await c.ready();
  return c;
}

async function load(addr, requests, connections) {
  const consumers = [];
  for (let i = 0; i < Number(connections); i++) {
    consumers.push(await consumer(addr, 'org.example.Greeter', '1.0.0', 'blue'));
  }
  let ok = 0;
  let failed = 0;
  const errors = [];
  const done = [];
  const calls = [];
  for (let i = 0; i < Number(requests); i++) {
    const c = consumers[i % consumers.length];
    calls.push(c.invoke('delayed', [ (i * 7) % 50, i ], { responseTimeout: 10000 }).then(r => {
      done.push(i);
      if (r === 'd' + i) ok += 1;
      else { failed += 1; errors.push('answer ' + r + ' to ' + i); }
    }, e => { failed += 1; errors.push(String(e.message)); }));
  }
  await Promise.all(calls);
  const inOrder = done.every((v, k) => k === 0 || done[k - 1] < v);
  console.log(JSON.stringify({ ok, failed, errors: errors.slice(0, 5), inOrder }));
}

async function call(addr, iface, version, group, method, args, timeout) {
  const c = await consumer(addr, iface, version, group);
  const started = Date.now();
  try {
    const result = await c.invoke(method, JSON.parse(args), {
      responseTimeout: Number(timeout || 10000),
      requestProps: { trace: 'node-7' },
    });
    console.log(JSON.stringify({ result }));
  } catch (e) {
    console.log(JSON.stringify({ error: String(e.message), ms: Date.now() - started }));
  }
}

async function hang(addr, iface, calls) {
  const c = await consumer(addr, iface, '1.0.0', 'blue');
  const started = Date.now();
  const silent = c.invoke('hang', [], { responseTimeout: 10000 }).then(
    result => ({ result, ms: Date.now() - started }),
    e => ({ error: String(e.message), ms: Date.now() - started }));
  let ok = 0;
  let failed = 0;
  const errors = [];
  const others = [];
  for (let i = 0; i < Number(calls); i++) {
    others.push(c.invoke('sayHello', [ 'h' + i ], { responseTimeout: 10000 }).then(r => {
      if (r.endsWith(' hello h' + i)) ok += 1;
      else { failed += 1; errors.push('answer ' + r); }
    }, e => { failed += 1; errors.push(String(e.message)); }));
  }
  await Promise.all(others);
  const othersMs = Date.now() - started;
  console.log(JSON.stringify({ hang: await silent, ok, failed, errors: errors.slice(0, 5), othersMs }));
}

const [ mode, ...args ] = process.argv.slice(2);
const modes = { server, load, call, hang };
modes[mode](...args).then(() => {
  if (mode !== 'server') process.exit(0);
}, e => {
  console.log(JSON.stringify({ fatal: String(e && e.stack || e) }));
  process.exit(1);
});

// A real dubbo consumer: npm sofa-rpc-node's RpcClient speaking npm dubbo-remoting (hessian2),
// connected straight to ADDR (no registry). Prints one line per call: "OK <method> <result>" or
// "ERR <method> <message>", then sends one heartbeat and exits.
// Usage: node client.js ADDR
'use strict';

const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('dubbo-remoting');

const logger = { info() {}, warn() {}, debug() {}, error() {} };

async function call(consumer, method, args) {
  try {
    const result = await consumer.invoke(method, args, {
      responseTimeout: 5000,
      requestProps: { trace: 'abc-123' },
    });
    console.log('OK ' + method + ' ' + result);
  } catch (err) {
    console.log('ERR ' + method + ' ' + err.message.split('\n')[0]);
  }
}

// Every hessian2 shape the real encoder writes: strings (short, medium, chunked), ints, longs,
// doubles, booleans, null, dates, binary, typed and untyped lists and maps, objects with class
// definitions (twice: the second by reference to the definition). hessian.js 2.11 writes them as
// 'R' string chunks of 0x8000, 'A' binary chunks, 0x72/0x73 typed fixed lists, 'H' maps, 0x4a
// dates, 'L' longs, 0x5f float doubles, a 'C' class definition and 0x60 compact objects.
function shapeArgs() {
  // hessian.js's typed form: { $class: 'java type', $: value }.
  const j = ($class, $) => ({ $class, $ });
  const pet = name => j('org.example.Pet', {
    name: j('java.lang.String', name),
    age: j('int', 3),
    owner: null,
  });
  return [
    'x'.repeat(70000),
    j('java.lang.String', '\u20acuro \ud83d\ude00 ' + 'y'.repeat(600)),
    j('int', -2049),
    j('long', 1234567890123),
    j('double', 3.25),
    j('boolean', true),
    null,
    new Date(1700000000000),
    Buffer.alloc(70000, 7),
    j('java.util.List', [ 'a', 'b' ]),
    j('[int', [ 1, 2, 3 ]),
    j('java.util.Map', { k: j('int', 1) }),
    j('java.util.HashMap', { nested: j('java.util.ArrayList', [ j('java.util.Map', { deep: 'er' }) ]) }),
    pet('tom'),
    pet('jerry'),
  ];
}

async function main() {
  const client = new RpcClient({ logger, protocol });
  const consumer = client.createConsumer({
    interfaceName: 'org.example.Greeter',
    version: '1.0.0',
    group: 'blue',
    serverHost: process.argv[2],
  });
  await consumer.ready();
  await call(consumer, 'sayHello', ['world']);
  await call(consumer, 'shapes', shapeArgs());
  await call(consumer, 'noProvider', ['x']);
  await call(consumer, 'timeout', ['x']);
  await call(consumer, 'missing', ['x']);
  // The real client's own heartbeat, as it sends one on an idle connection.
  // (RpcConnection.heartbeat() sends one once the connection has been idle for maxIdleTime.)
  for (const conn of client.connectionManager.connections.values()) {
    conn._lastActiveTime = 0;
    conn.heartbeat();
  }
  await new Promise(resolve => setTimeout(resolve, 300));
  console.log('DONE');
  client.close();
  process.exit(0);
}

main().catch(err => {
  console.log('FATAL ' + err.message);
  process.exit(1);
});

// A real dubbo provider: npm sofa-rpc-node's RpcServer speaking npm dubbo-remoting (hessian2).
// Usage: node server.js PORT. Prints "READY <port>" once listening; exits when stdin closes.
'use strict';

const { RpcServer } = require('sofa-rpc-node').server;
const protocol = require('dubbo-remoting');

const port = Number(process.argv[2]);
const logger = { info() {}, warn() {}, debug() {}, error: console.error };
const server = new RpcServer({ logger, port, protocol });

server.addService({ interfaceName: 'org.example.Greeter', version: '1.0.0', group: 'blue' }, {
  async sayHello(name) {
    return 'hello ' + name;
  },
  // Arguments of many hessian2 shapes; answers with a summary so the client can check them.
  async shapes(...args) {
    return args.map(a => (a === null ? 'null' : Array.isArray(a) ? 'list' : typeof a)).join(',');
  },
});

server.start().then(() => {
  console.log('READY ' + port);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();

"""A real dubbo consumer from PyPI: dubbo-ssl-python's DubboClient (its own hessian2 encoder),
connected straight to ADDR (a sidecar's outbound listener). Runs the calls given as a JSON list
of [interface, version, group, method, args, timeout_s] and prints one JSON line per call:
{"result": ...} or {"error": message, "ms": elapsed}; for a non-OK dubbo response the client
raises the response's error message.
Usage: python dubbo_peer.py ADDR CALLS_JSON"""
import json
import sys
import time

from dubbo_ssl.client import DubboClient


def main():
    addr = sys.argv[1]
    for iface, version, group, method, args, timeout in json.loads(sys.argv[2]):
        client = DubboClient(iface, group=group, version=version, dubbo_version='2.7.23',
                             host=addr)
        started = time.monotonic()
        try:
            result = client.call(method, args, context={'trace': 'py-7'}, timeout=timeout)
            print(json.dumps({'result': result}), flush=True)
        except Exception as err:  # the client raises its own exception types
            ms = int((time.monotonic() - started) * 1000)
            message = ' '.join(str(err).split()) or type(err).__name__
            print(json.dumps({'error': message, 'ms': ms}), flush=True)


if __name__ == '__main__':
    main()

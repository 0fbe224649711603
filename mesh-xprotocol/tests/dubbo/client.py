"""A real dubbo consumer from PyPI: dubbo-ssl-python's DubboClient (its own hessian2 encoder),
connected straight to ADDR. Prints "OK <method> <result>" or "ERR <method> <message>" per call.
Usage: python client.py ADDR"""
import sys

from dubbo_ssl.client import DubboClient
from dubbo_ssl.codec.encoder import Object


def call(client, method, args):
    try:
        result = client.call(method, args, context={'trace': 'py-7'}, timeout=5)
        print('OK', method, result, flush=True)
    except Exception as err:  # the client raises its own exception types
        print('ERR', method, ' '.join(str(err).split()) or type(err).__name__, flush=True)


def main():
    client = DubboClient('org.example.Greeter', group='blue', version='1.0.0',
                         dubbo_version='2.7.23', host=sys.argv[1])
    call(client, 'sayHello', ['world'])
    pet = Object('org.example.Pet')
    pet['name'] = 'tom'
    pet['age'] = 3
    call(client, 'shapes', ['z' * 40000, 7, 2 ** 40, 2.5, True, [1, 2, 3], pet, pet])
    call(client, 'noProvider', ['x'])
    print('DONE', flush=True)


if __name__ == '__main__':
    main()

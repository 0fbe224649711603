"""A proxyless gRPC client for proxyless_grpc.rs: grpcio's C-core xDS resolver, no codegen.

Usage: python proxyless_grpc_client.py TARGET REQUEST_HEX MAX_SECONDS
(the xDS bootstrap comes from GRPC_XDS_BOOTSTRAP). It opens one channel to TARGET (e.g.
xds:///hello) and answers commands read from stdin, one line each, on stdout:

  call                     one /grpc.health.v1.Health/Check with REQUEST_HEX as the raw request;
                           prints the raw response as hex, or "error:CODE:details"
  until HEX CALLS SECONDS  calls until the response is HEX, at most CALLS calls and SECONDS
                           seconds; prints "LAST CALLS ELAPSED" (LAST is HEX when it got there)

It exits at end of stdin, and on its own after MAX_SECONDS whatever happens (SIGALRM), so a
stuck test never leaves it behind.
"""

import signal
import sys
import time

import grpc


def main():
    target, request, max_seconds = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
    signal.alarm(max_seconds)
    channel = grpc.insecure_channel(target)
    check = channel.unary_unary("/grpc.health.v1.Health/Check")

    def call():
        try:
            # wait_for_ready: the first call waits for xDS resolution instead of failing fast.
            return check(request, timeout=5, wait_for_ready=True).hex()
        except grpc.RpcError as e:
            return f"error:{e.code().name}:{e.details()}".replace(" ", "_")

    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "call":
            print(call(), flush=True)
        elif cmd[0] == "until":
            want, calls, seconds = cmd[1], int(cmd[2]), float(cmd[3])
            start, n, last = time.monotonic(), 0, "none"
            while n < calls and time.monotonic() - start < seconds:
                n += 1
                last = call()
                if last == want:
                    break
                time.sleep(0.02)
            print(f"{last} {n} {time.monotonic() - start:.3f}", flush=True)
        else:
            print(f"error:unknown_command:{cmd[0]}", flush=True)
    channel.close()


if __name__ == "__main__":
    main()

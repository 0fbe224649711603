"""A real WebSocket server and client (Python `websockets`, sync API) for mesh-proxy/tests/l4.rs.

serve:        prints its port, then echoes each message as "echo:<path>:<message>".
client URL:   sends three small messages and one of 200 kB, prints each reply (the big one
              as its length), then closes cleanly.
"""
import sys

from websockets.sync.client import connect
from websockets.sync.server import serve


def echo(ws):
    for msg in ws:
        ws.send(f"echo:{ws.request.path}:{msg}")


def main():
    mode = sys.argv[1]
    if mode == "serve":
        with serve(echo, "127.0.0.1", 0, max_size=None) as server:
            print(server.socket.getsockname()[1], flush=True)
            server.serve_forever()
    elif mode == "client":
        with connect(sys.argv[2], open_timeout=10, close_timeout=5, max_size=None) as ws:
            for i in range(3):
                ws.send(f"m{i}")
                print(ws.recv(timeout=10), flush=True)
            ws.send("x" * 200_000)
            print(len(ws.recv(timeout=10)), flush=True)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

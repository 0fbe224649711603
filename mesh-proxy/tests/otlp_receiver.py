"""A real OTLP/gRPC trace receiver for the tracing tests: the OpenTelemetry project's own
protobuf definitions (PyPI opentelemetry-proto) served with grpcio.

Binds 127.0.0.1 on a free port, prints `PORT <n>`, then one JSON line per span received:
service, trace_id, span_id, parent_span_id (hex), name, kind (the OTLP enum: 2 SERVER,
3 CLIENT), status (0 unset, 1 ok, 2 error), attributes. Exits when stdin closes (the test
holds it open) or after the lifetime given as the first argument, in seconds.
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

lock = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        lines = []
        for rs in request.resource_spans:
            service = next(
                (value(a.value) for a in rs.resource.attributes if a.key == "service.name"), None
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    lines.append(json.dumps({
                        "service": service,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "status": s.status.code,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                    }))
        with lock:
            for line in lines:
                print(line)
            sys.stdout.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    lifetime = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with lock:
        print(f"PORT {port}")
        sys.stdout.flush()
    stop = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait(lifetime)
    server.stop(0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The measuring half of ./scripts/bench (run it through that script, which installs and builds).

Starts the app once; then per scenario starts fresh two-hop chains (mesh-sidecar, Envoy, the
bench-floor forwarder; fresh processes so that no contender's peak RSS carries what its allocator
kept from an earlier scenario), runs each contender in turn per round (alternating, so a slow
spell of the shared machine hits all of them), stops the chains, and writes a markdown table with
the ratios.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone

import rpc  # the bolt and dubbo rows (benches/floor/rpc.py)

ROOT = os.environ["BENCH_ROOT"]
BIN = os.environ["BENCH_BIN_DIR"]
ENVOY = os.environ["MESH_ENVOY_BIN"]
NPROC = os.cpu_count() or 1
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
APP_WORKERS = int(os.environ.get("BENCH_APP_WORKERS", str(NPROC)))
H2_CONNS = int(os.environ.get("BENCH_H2_CONNS", "1"))
BASE = int(os.environ.get("BENCH_PORT_BASE", "18600"))
# The protocol of the proxy-to-proxy hop, the same for every contender: h1 (HTTP/1.1 keep-alive,
# a pooled connection per request in flight; what our mesh.yaml services default to) or h2
# (HTTP/2 with prior knowledge, multiplexed on one connection: what Linkerd always runs between
# its proxies and Istio's h2UpgradePolicy turns on for Envoy). The last hop to the app is
# HTTP/1.1 either way, as the client's hop is.
HOP = os.environ.get("BENCH_HOP", "h1")
if HOP not in ("h1", "h2"):
    sys.exit(f"BENCH_HOP must be h1 or h2, not {HOP}")
# An RPC run: HTTP/1.1 c=32 beside bolt and dubbo at 32 connections, the RSS per RPC connection
# and the callgrind count of a bolt hop; writes benches/RESULTS-rpc.md (see rpc.py).
RPC_MODE = os.environ.get("BENCH_RPC") == "1"
OUT = os.environ.get("BENCH_OUT", os.path.join(
    ROOT, "benches", "RESULTS-rpc.md" if RPC_MODE else "RESULTS.md"))
PROFILE = os.environ.get("BENCH_PROFILE") == "1"
# Instructions per request of one hop under callgrind: immune to the shared machine's load.
CALLGRIND = os.environ.get("BENCH_CALLGRIND") == "1"
TICKS = os.sysconf("SC_CLK_TCK")
# A/B of a change: a second mesh-sidecar binary (e.g. the build before it) as contender "base".
BASELINE = os.environ.get("BENCH_BASELINE_BIN")
# The cost of tracing: mesh-sidecar with --otlp-endpoint at 1 % and at 100 % sampling, each
# exporting to its own bench-otlp-sink (an OTLP/gRPC service that counts and drops spans).
TRACING = os.environ.get("BENCH_TRACING") == "1"
TRACE_RATIOS = {"trace1": "0.01", "trace100": "1"}
# The access log's cost: contenders "ours+log" and "envoy+log", the same chains with an access
# log (Envoy's default text format, to a file) on every proxy, measured beside the plain ones.
ACCESS_LOG = os.environ.get("BENCH_ACCESS_LOG") == "1"
# The cost of mTLS between the proxies: contenders "ours+mtls" and "envoy+mtls", the same chains
# with the proxy-to-proxy hop over mutual TLS (SPIFFE certificates from one bench CA, the
# outbound proxy verifying the inbound one's URI SAN), measured beside the plaintext ones.
MTLS = os.environ.get("BENCH_MTLS") == "1"
TRUST_DOMAIN = "bench.local"
SPIFFE = {name: f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{name}" for name in ("outbound", "inbound")}

APP = BASE
RPC_APP = BASE + 2  # bench-rpcapp: bolt and dubbo on one port
PORTS = {  # contender: (client-facing port, second hop port, admin ports)
    "ours": (BASE + 11, BASE + 12, (BASE + 13, BASE + 14)),
    "envoy": (BASE + 21, BASE + 22, (BASE + 23, BASE + 24)),
    "floor": (BASE + 31, BASE + 32, None),
    "base": (BASE + 41, BASE + 42, (BASE + 43, BASE + 44)),
    "trace1": (BASE + 71, BASE + 72, (BASE + 73, BASE + 74)),
    "trace100": (BASE + 81, BASE + 82, (BASE + 83, BASE + 84)),
    "ours+log": (BASE + 91, BASE + 92, (BASE + 93, BASE + 94)),
    "envoy+log": (BASE + 101, BASE + 102, (BASE + 103, BASE + 104)),
    "ours+mtls": (BASE + 111, BASE + 112, (BASE + 113, BASE + 114)),
    "envoy+mtls": (BASE + 121, BASE + 122, (BASE + 123, BASE + 124)),
}
SINKS = {"trace1": BASE + 75, "trace100": BASE + 85}  # each tracing contender's span sink
ALL_CONTENDERS = (["direct", "ours", "envoy", "floor"] + (["base"] if BASELINE else [])
                  + (list(TRACE_RATIOS) if TRACING else [])
                  + (["ours+log", "envoy+log"] if ACCESS_LOG else [])
                  + (["ours+mtls", "envoy+mtls"] if MTLS else []))
# "tcp": HTTP/1.1 keep-alive (wrk) through opaque L4 hops: each proxy's listener is a TCP proxy
# (ours: `tcp_proxy` with no route table; Envoy: its `tcp_proxy` network filter). The floor has no
# L4 mode and sits it out.
# "bolt" and "dubbo": bench-rpcload through RPC listeners (rpc.py); only in BENCH_SCENARIOS or
# an RPC run (BENCH_RPC=1), whose default scenarios and contenders are these:
# "h2c-h2": the h2c client with the proxy-to-proxy hop over HTTP/2 whatever BENCH_HOP says, so
# one run has the h2c row with both hops side by side (issue #20 asks for both).
ALL_SCENARIOS = [("h1", 1), ("h1", 32), ("h1", 256), ("h2c", 32)] + (
    [("h2c-h2", 32)] if HOP == "h1" else []) + [("tcp", 32)]
if RPC_MODE:
    ALL_SCENARIOS = [("h1", 32), ("bolt", 32), ("dubbo", 32)]
    ALL_CONTENDERS = ["direct", "ours", "envoy"] + (["base"] if BASELINE else [])
# Subsets for a quick A/B: BENCH_CONTENDERS=ours,floor BENCH_SCENARIOS=h1:32,h2c:32
CONTENDERS = [c for c in os.environ.get("BENCH_CONTENDERS", ",".join(ALL_CONTENDERS)).split(",")
              if c]
SCENARIOS = [(p, int(n)) for p, n in (x.split(":") for x in
             os.environ.get("BENCH_SCENARIOS", ",".join(f"{p}:{n}" for p, n in ALL_SCENARIOS))
             .split(",") if x)]
# Whether an HTTP/2 proxy-to-proxy hop runs (then callgrind counts the h2c → h2 hop too).
H2_HOP = HOP == "h2" or any(p == "h2c-h2" for p, _ in SCENARIOS)
# The in-process SDK's overhead (benches/sdk.rs, built by scripts/bench): its criterion CPU
# group and, with callgrind, its instructions per call, bare hyper client against MeshLayer.
SDK_BIN = os.environ.get("BENCH_SDK_BIN")
NAMES = {"direct": "direct (no proxy)", "ours": "mesh-sidecar ×2", "envoy": "Envoy ×2",
         "floor": "floor (hyper) ×2", "base": "mesh-sidecar (baseline) ×2",
         "trace1": "mesh-sidecar ×2, tracing 1 %", "trace100": "mesh-sidecar ×2, tracing 100 %",
         "ours+log": "mesh-sidecar ×2, access log", "envoy+log": "Envoy ×2, access log",
         "ours+mtls": "mesh-sidecar ×2, mTLS hop", "envoy+mtls": "Envoy ×2, mTLS hop"}

procs = []  # every process we started, stopped in the end
tmp = tempfile.mkdtemp(prefix="mesh-bench-")
PKI = None  # the bench CA and the proxies' certificates, made at start when MTLS


def log(msg):
    print(f"==> {msg}", flush=True)


def spawn(name, argv, env=None):
    out = open(os.path.join(tmp, f"{name}.log"), "w")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                         env={**os.environ, **(env or {})})
    procs.append((name, p))
    return p


def make_pki():
    """A bench CA and one leaf per proxy role (EC P-256, the SPIFFE id as URI SAN), as files in
    tmp; returns {role: (cert, key)} and the CA file."""
    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    ca_key, ca = os.path.join(tmp, "ca.key"), os.path.join(tmp, "ca.pem")
    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/O=bench/CN=bench mesh CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    leaves = {}
    for role, uri in SPIFFE.items():
        key, csr, cert = (os.path.join(tmp, f"{role}.{x}") for x in ("key", "csr", "pem"))
        ext = write(f"{role}.ext", f"subjectAltName=URI:{uri}\n"
                    "basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/O=bench/CN={role}")
        ssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "1", "-extfile", ext)
        leaves[role] = (cert, key)
    return leaves, ca


def pem_block(path, indent):
    with open(path) as f:
        return "\n".join(" " * indent + line for line in f.read().strip().splitlines())


def sidecar_tls(name, pki):
    """The sidecar config's mTLS pieces for the role: its secrets, and the TLS of its listener
    (inbound) or of its cluster (outbound)."""
    leaves, ca = pki
    cert, key = leaves[name]
    secrets = f"""secrets:
  - name: default
    tls_certificate:
      certificate_chain: |
{pem_block(cert, 8)}
      private_key: |
{pem_block(key, 8)}
  - name: ROOTCA
    validation_context:
      trusted_ca: |
{pem_block(ca, 8)}
"""
    listener = """
    tls: { certificate: default, validation: ROOTCA, mode: strict }""" if name == "inbound" else ""
    cluster = f"""
    tls: {{ certificate: default, validation: ROOTCA, match_uri_sans: ["{SPIFFE['inbound']}"] }}""" \
        if name == "outbound" else ""
    return secrets, listener, cluster


def sidecar_yaml(name, listen, upstream, admin, protocol="http1", tcp=False, pki=None):
    if tcp:
        return f"""admin: 127.0.0.1:{admin}
listeners:
  - name: {name}
    address: 127.0.0.1:{listen}
    direction: {name}
    tcp_proxy: {{ destination: {{ cluster: next }} }}
clusters:
  - name: next
    load_assignment:
      endpoints:
        - endpoints: [ {{ address: "127.0.0.1:{upstream}" }} ]
"""
    secrets, listener_tls, cluster_tls = sidecar_tls(name, pki) if pki else ("", "", "")
    return f"""admin: 127.0.0.1:{admin}
{secrets}listeners:
  - name: {name}
    address: 127.0.0.1:{listen}
    direction: {name}{listener_tls}
    route_config:
      name: {name}
      virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
            - name: all
              route: {{ cluster: next }}
clusters:
  - name: next
    protocol: {protocol}{cluster_tls}
    load_assignment:
      endpoints:
        - endpoints: [ {{ address: "127.0.0.1:{upstream}" }} ]
"""


ENVOY_TCP_FILTER = """
            - name: envoy.filters.network.tcp_proxy
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
                stat_prefix: listener
                cluster: next"""


def access_log_path(contender, name, tag):
    return os.path.join(tmp, f"access-{contender}-{name}-{tag}.log")


def envoy_tls(role, pki, h2):
    """Envoy's transport sockets for the role: the inbound listener's (TLS with a required client
    certificate) and the outbound cluster's (TLS verifying the inbound proxy's URI SAN), with the
    same certificates as the sidecars get. Returns (the filter chain's head, the cluster's
    transport socket)."""
    leaves, ca = pki
    cert, key = leaves[role]
    if role == "inbound":
        return f"""
        - transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              require_client_certificate: true
              common_tls_context:
                tls_certificates:
                  - certificate_chain: {{ filename: {cert} }}
                    private_key: {{ filename: {key} }}
                validation_context: {{ trusted_ca: {{ filename: {ca} }} }}
                alpn_protocols: [h2, http/1.1]
          filters:""", ""
    alpn = """
            alpn_protocols: [h2]""" if h2 else ""
    return "\n        - filters:", f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          common_tls_context:
            tls_certificates:
              - certificate_chain: {{ filename: {cert} }}
                private_key: {{ filename: {key} }}
            validation_context:
              trusted_ca: {{ filename: {ca} }}
              match_typed_subject_alt_names:
                - san_type: URI
                  matcher: {{ exact: "{SPIFFE['inbound']}" }}{alpn}"""


def envoy_yaml(listen, upstream, admin, h2=False, tcp=False, log=None, tls=None):
    # The upstream hop's protocol: HTTP/1.1 unless h2 (Envoy's explicit HTTP/2 config).
    protocol = """
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {}""" if h2 else ""
    # Envoy's file access log with its default format, as the sidecar's --access-log writes it.
    access_log = f"""
                access_log:
                  - name: envoy.access_loggers.file
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                      path: {log}""" if log else ""
    chain_head, cluster_tls = envoy_tls(*tls, h2) if tls else ("\n        - filters:", "")
    head = f"""admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
    - name: listener
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
      filter_chains:{chain_head}"""
    cluster = f"""
  clusters:
    - name: next
      type: STATIC
      connect_timeout: 5s{protocol}{cluster_tls}
      load_assignment:
        cluster_name: next
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }}
"""
    if tcp:
        return head + ENVOY_TCP_FILTER + cluster
    return head + f"""
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: listener{access_log}
                codec_type: AUTO
                http2_protocol_options: {{}}
                route_config:
                  name: all
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: next }}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router""" + cluster


def write(name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def start_app():
    # The HTTP app serves the HTTP scenarios and the callgrind hops.
    if CALLGRIND or not all(rpc.is_rpc(p) for p, _ in SCENARIOS):
        spawn("app", [f"{BIN}/bench-app", f"127.0.0.1:{APP}"],
              {"TOKIO_WORKER_THREADS": str(APP_WORKERS)})
    if any(rpc.is_rpc(p) for p, _ in SCENARIOS):
        spawn("rpcapp", [f"{BIN}/bench-rpcapp", f"127.0.0.1:{RPC_APP}"],
              {"TOKIO_WORKER_THREADS": str(APP_WORKERS)})


def start_rpc_chains(tag, proto, contenders=None):
    """Starts fresh RPC proxies (ours, the baseline, Envoy's generic proxy for dubbo) for the
    contenders that can carry `proto`; returns {contender: [outbound, inbound]}."""
    contenders = [c for c in (contenders or CONTENDERS) if c in rpc.CARRIERS[proto]]
    chains = {"direct": []}
    worker_env = {"TOKIO_WORKER_THREADS": str(WORKERS), "RUST_LOG": "warn"}
    sidecars = [("ours", f"{BIN}/mesh-sidecar")] + ([("base", BASELINE)] if BASELINE else [])
    for contender, binary in sidecars:
        if contender not in contenders:
            continue
        front, back, (a1, a2) = PORTS[contender]
        chains[contender] = [
            spawn(f"{contender}-{name}-{tag}", [binary, "--config", write(
                f"{contender}-{name}-{proto}.yaml",
                rpc.sidecar_yaml(name, listen, upstream, admin, proto))], worker_env)
            for name, listen, upstream, admin in (("outbound", front, back, a1),
                                                  ("inbound", back, RPC_APP, a2))]
    if "envoy" in contenders:
        front, back, (a1, a2) = PORTS["envoy"]
        chains["envoy"] = [
            spawn(f"envoy-{name}-{tag}", [ENVOY, "-c", write(
                f"envoy-{name}-{proto}.yaml", rpc.envoy_yaml(listen, upstream, admin)),
                "--concurrency", str(WORKERS), "--disable-hot-restart", "-l", "error"])
            for name, listen, upstream, admin in (("outbound", front, back, a1),
                                                  ("inbound", back, RPC_APP, a2))]
    return chains


def hop_of(proto):
    """The proxy-to-proxy hop of a scenario: HTTP/2 for "h2c-h2", else BENCH_HOP."""
    return "h2" if proto == "h2c-h2" else HOP


def client_of(proto):
    """The load generator's protocol of a scenario ("h2c-h2" is h2c with an HTTP/2 hop)."""
    return "h2c" if proto == "h2c-h2" else proto


def start_chains(tag, proto):
    """Starts fresh proxies for every contender the scenario applies to; returns
    {contender: [outbound, inbound]}."""
    if rpc.is_rpc(proto):
        return start_rpc_chains(tag, proto)
    hop = hop_of(proto)
    tcp = proto == "tcp"
    chains = {"direct": []}
    worker_env = {"TOKIO_WORKER_THREADS": str(WORKERS), "RUST_LOG": "warn"}
    # The previous scenario's access logs are of no further use (and may be large).
    for f in os.listdir(tmp):
        if f.startswith("access-"):
            os.remove(os.path.join(tmp, f))
    sidecars = [("ours", f"{BIN}/mesh-sidecar")]
    if BASELINE:
        sidecars.append(("base", BASELINE))
    sidecars += [(c, f"{BIN}/mesh-sidecar") for c in TRACE_RATIOS]
    sidecars.append(("ours+log", f"{BIN}/mesh-sidecar"))
    sidecars.append(("ours+mtls", f"{BIN}/mesh-sidecar"))
    for contender, binary in sidecars:
        # The mTLS contenders' hop is HTTP; the L4 scenario relays bytes and sits them out.
        if contender not in CONTENDERS or (tcp and contender.endswith("+mtls")):
            continue
        pki = PKI if contender.endswith("+mtls") else None
        front, back, (a1, a2) = PORTS[contender]
        log_args = lambda name: (["--access-log", access_log_path(contender, name, tag)]
                                 if contender.endswith("+log") else [])
        chains[contender] = [
            spawn(f"{contender}-{name}-{tag}", [binary, "--config", write(
                f"{contender}-{name}.yaml",
                sidecar_yaml(name, listen, upstream, admin, protocol, tcp, pki))]
                + trace_args(contender, name) + log_args(name), worker_env)
            for name, listen, upstream, admin, protocol in (
                ("outbound", front, back, a1, "http2" if hop == "h2" else "http1"),
                ("inbound", back, APP, a2, "http1"))]
    for contender in ("envoy", "envoy+log", "envoy+mtls"):
        if contender not in CONTENDERS or (tcp and contender.endswith("+mtls")):
            continue
        front, back, (a1, a2) = PORTS[contender]
        envoys = []
        for name, listen, upstream, admin, h2 in (("outbound", front, back, a1, hop == "h2"),
                                                  ("inbound", back, APP, a2, False)):
            log_file = access_log_path(contender, name, tag) if contender.endswith("+log") else None
            tls = (name, PKI) if contender.endswith("+mtls") else None
            cfg = write(f"{contender}-{name}.yaml",
                        envoy_yaml(listen, upstream, admin, h2, tcp, log_file, tls))
            envoys.append(spawn(f"{contender}-{name}-{tag}",
                                [ENVOY, "-c", cfg, "--concurrency", str(WORKERS),
                                 "--disable-hot-restart", "-l", "warning"]))
        chains[contender] = envoys
    if "floor" in CONTENDERS and not tcp:
        front, back, _ = PORTS["floor"]
        chains["floor"] = [
            spawn(f"floor-{name}-{tag}", [f"{BIN}/bench-floor", f"127.0.0.1:{listen}",
                                          f"127.0.0.1:{upstream}", h], worker_env)
            for name, listen, upstream, h in (("outbound", front, back, hop),
                                                ("inbound", back, APP, "h1"))]
    return chains


def trace_args(contender, hop):
    """The tracing flags of a tracing contender's sidecar (none for the others)."""
    if contender not in TRACE_RATIOS:
        return []
    return ["--otlp-endpoint", f"http://127.0.0.1:{SINKS[contender]}",
            "--trace-sampling", TRACE_RATIOS[contender], "--trace-service-name", hop]


def start_sinks():
    for c in TRACE_RATIOS:
        if c in CONTENDERS:
            spawn(f"otlp-sink-{c}", [f"{BIN}/bench-otlp-sink", f"127.0.0.1:{SINKS[c]}"])


def sink_spans(contender):
    """The spans a tracing contender's sink received so far (its last `spans N` line)."""
    try:
        with open(os.path.join(tmp, f"otlp-sink-{contender}.log")) as f:
            counts = [int(line.split()[1]) for line in f if line.startswith("spans ")]
    except OSError:
        return 0
    return counts[-1] if counts else 0


def stop(ps):
    for p in ps:
        p.terminate()
    for p in ps:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    procs[:] = [(n, p) for n, p in procs if p not in ps]


def port_of(contender, proto="h1"):
    if contender == "direct":
        return RPC_APP if rpc.is_rpc(proto) else APP
    return PORTS[contender][0]


def exit_if_any_died():
    for name, p in procs:
        if p.poll() is not None:
            sys.exit(f"{name} exited with {p.returncode}; log in {tmp}/{name}.log")


def wait_ready(contenders, proto="h1", deadline=30.0):
    start = time.monotonic()
    for c in ["direct"] + [c for c in contenders if c != "direct"]:
        if rpc.is_rpc(proto):
            port = port_of(c, proto)
            while not rpc.answers(BIN, proto, port):
                exit_if_any_died()
                if time.monotonic() - start > deadline:
                    sys.exit(f"{c} not answering {proto} on port {port} after {deadline} s; "
                             f"logs in {tmp}")
                time.sleep(0.2)
            continue
        url = f"http://127.0.0.1:{port_of(c)}/"
        while True:
            exit_if_any_died()
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200 and r.read() == b"Hello, mesh!\n":
                        break
            except OSError:
                pass
            if time.monotonic() - start > deadline:
                sys.exit(f"{c} not answering on {url} after {deadline} s; logs in {tmp}")
            time.sleep(0.2)


def steal_ticks():
    """(steal, total) ticks of all CPUs from /proc/stat: the share of time the hypervisor gave
    this virtual machine's CPUs to someone else, which slows every contender at once."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def steal_pct(before, after):
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def reset_hwm(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass  # not permitted: the peak then spans the whole run


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def hwm_kb(pid):
    return status_kb(pid, "VmHWM")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def run_wrk(port, conns, secs):
    argv = ["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{secs}s", "--latency",
            f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    res = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50": ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99": ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "errors": 0,
    }
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["errors"] += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] += sum(int(x) for x in m.groups())
    return res


def run_h2load(port, conns, secs):
    logf = os.path.join(tmp, "h2load.log")
    argv = ["h2load", "-c", str(conns), "-t", str(min(conns, 2)), "-m", "32", "-D", str(secs),
            "--log-file", logf, f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", out)
    done, ok = int(m.group(3)), int(m.group(4))
    lat = []
    with open(logf) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                lat.append(int(parts[2]) / 1000.0)  # µs → ms
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    return {"rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1)),
            "requests": done, "p50": pct(0.50), "p99": pct(0.99), "errors": done - ok}


def measure(contender, pids, proto, conns, secs):
    port = port_of(contender, proto)
    run = run_h2load if client_of(proto) == "h2c" else run_wrk
    if rpc.is_rpc(proto):
        run = lambda port, conns, secs: rpc.run(BIN, proto, port, conns, secs)
    conns = H2_CONNS if client_of(proto) == "h2c" else conns
    run(port, conns, 1)  # warm-up: connections and pools
    for pid in pids:
        reset_hwm(pid)
    before = [cpu_ticks(pid) for pid in pids]
    stolen = steal_ticks()
    res = run(port, conns, secs)
    res["steal"] = steal_pct(stolen, steal_ticks())
    res["cpu"] = [(cpu_ticks(pid) - b) / TICKS for pid, b in zip(pids, before)]
    res["rss"] = [hwm_kb(pid) / 1024.0 for pid in pids]
    # What the resident set is made of right after the load: anonymous (heap, stacks) and
    # file-backed (the binary's and libraries' pages the kernel mapped in).
    res["anon"] = [status_kb(pid, "RssAnon") / 1024.0 for pid in pids]
    res["file"] = [status_kb(pid, "RssFile") / 1024.0 for pid in pids]
    return res


def measure_handshakes(contender, inbound_pid, secs):
    """New mTLS connections per second into the contender's inbound proxy: `openssl s_time -new`
    (a full TLS 1.3 handshake with the outbound role's client certificate per connection, then
    a close), and the inbound proxy's CPU per handshake. One openssl client process: the figure
    is a rate the client and the proxy reach together, the same client for every contender."""
    leaves, ca = PKI
    cert, key = leaves["outbound"]
    before = cpu_ticks(inbound_pid)
    out = subprocess.run(
        ["openssl", "s_time", "-connect", f"127.0.0.1:{PORTS[contender][1]}", "-new",
         "-time", str(secs), "-cert", cert, "-key", key, "-CAfile", ca],
        capture_output=True, text=True, timeout=secs + 30).stdout
    cpu = (cpu_ticks(inbound_pid) - before) / TICKS
    m = re.search(r"(\d+) connections in ([\d.]+) real seconds", out)
    if not m:
        sys.exit(f"openssl s_time against {contender}: no result in:\n{out}")
    n, real = int(m.group(1)), float(m.group(2))
    return {"rate": n / real, "cpu_ms": 1000.0 * cpu / max(n, 1)}


def rpc_connections():
    """RSS per bolt connection into the outbound sidecar: rpc.CONNS connections idle (connected,
    no request), idle after one request each, active (one request in flight each for
    BENCH_DURATION), and a fifth as many idle after one large (256 KiB) request each: what
    buffers a connection keeps after a big frame. Each phase on fresh chains (ours, and the
    baseline binary beside it when BENCH_BASELINE_BIN is set), so no phase inherits what another
    left in the allocator."""
    big = max(1, rpc.CONNS // 5)
    phases = [("idle: connected, no request", rpc.CONNS, 0, None, None),
              ("idle after one request each", rpc.CONNS, rpc.CONNS, None, None),
              (f"active: 1 request in flight each, {DURATION} s", rpc.CONNS, None, DURATION,
               None),
              ("idle after one 256 KiB request each", big, big, None, 256 * 1024)]
    contenders = ["ours"] + (["base"] if BASELINE else [])
    res = {}
    for i, (name, conns, requests, secs, body) in enumerate(phases):
        for contender in contenders:
            chain = start_rpc_chains(f"conns-{i}-{contender}", "bolt", [contender])[contender]
            wait_ready([contender], "bolt")
            port = port_of(contender, "bolt")
            rpc.run(BIN, "bolt", port, 1, requests=100)  # the upstream connections exist
            rss = lambda: [status_kb(p.pid, "VmRSS") for p in chain]
            before = rss()
            if secs is None:
                during, r = rpc.hold(BIN, "bolt", port, conns, requests, 3, rss, body)
                load = f"{r['requests']} requests, {r['errors']} errors"
            else:
                for p in chain:
                    reset_hwm(p.pid)
                r = rpc.run(BIN, "bolt", port, conns, secs)
                during = [hwm_kb(p.pid) for p in chain]
                load = (f"{r['rps']:.0f} req/s, p99 {r['p99']:.1f} ms, {r['errors']} errors "
                        f"(peak RSS)")
            res[(name, contender)] = {"conns": conns, "out": (before[0], during[0]),
                                      "in": (before[1], during[1]), "load": load}
            log(f"{conns} bolt connections, {name}, {contender}: outbound RSS {before[0]} → "
                f"{during[0]} KB, inbound {before[1]} → {during[1]} KB ({load})")
            stop(chain)
    return res


def profile(pids):
    """perf-records the inbound sidecar under 32 connections; prints and saves the top costs."""
    data = os.path.join(tmp, "perf.data")
    port = port_of("ours")
    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-o", data,
                            "-p", str(pids[1].pid), "--", "sleep", str(DURATION)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_wrk(port, 32, DURATION)
    rec.wait()
    text = []
    for sort, limit in (("dso", 10), ("symbol", 40)):
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "-g",
                              "none", "--percent-limit", "0.4", "--sort", sort],
                             capture_output=True, text=True).stdout
        lines = [" ".join(l.split()) for l in rep.splitlines()
                 if l.strip() and not l.startswith("#")]
        text += [f"-- by {sort}:"] + lines[:limit]
    text = "\n".join(["perf (cpu-clock): the inbound mesh-sidecar at 32 connections"] + text)
    print(text)
    path = os.path.join(os.path.dirname(OUT), "perf-top.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")
    log(f"wrote {path}")


def instructions_per_request(name, argv, port, n=3000, h2=False, rpc_proto=None):
    """User-space instructions per request of one proxy hop (client → proxy → app), counted by
    callgrind between a warm-up and the end of `n` keep-alive requests (8 connections), or with
    `h2`, of `n` h2c requests on one connection, 32 streams at a time, or with `rpc_proto`, of
    `n` bolt or dubbo requests (bench-rpcload, 8 connections, one in flight each)."""
    out = os.path.join(tmp, f"callgrind-{name}.out")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + argv,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"})
    try:
        if rpc_proto:
            answered = rpc_instructions(name, p, port, n, rpc_proto)
            p.terminate()
            p.wait(timeout=60)
            return callgrind_total(name) / answered
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    r.read()
                    break
            except OSError:
                if time.monotonic() > deadline or p.poll() is not None:
                    sys.exit(f"{name} under callgrind does not answer on {url}")
                time.sleep(0.5)
        h2load = (["h2load", "-c", "1", "-m", "32", "-t", "1"] if h2
                  else ["h2load", "--h1", "-c", "8", "-t", "1"])
        subprocess.run(h2load + ["-n", "500", url], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, check=True)
        subprocess.run(h2load + ["-n", str(n), url], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, check=True)
    finally:
        p.terminate()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
    return callgrind_total(name) / n


def rpc_instructions(name, p, port, n, proto, conns=8):
    """The RPC half of instructions_per_request: ready, warm-up, zero, `n` requests, dump;
    returns how many requests were counted (each connection sends n/conns, rounded up)."""
    deadline = time.monotonic() + 60
    while not rpc.answers(BIN, proto, port):
        if time.monotonic() > deadline or p.poll() is not None:
            sys.exit(f"{name} under callgrind does not answer {proto} on port {port}")
        time.sleep(0.5)
    for count, zero in ((500, True), (n, False)):
        sent = conns * -(-count // conns)
        r = rpc.run(BIN, proto, port, conns, requests=count)
        if r["requests"] != sent or r["errors"]:
            sys.exit(f"{name} under callgrind: {r['requests']} of {sent} {proto} requests "
                     f"answered, {r['errors']} errors")
        ctl = ["callgrind_control", "-z" if zero else "-d", str(p.pid)]
        subprocess.run(ctl, capture_output=True, check=True)
    return sent


def callgrind_inclusive(path, symbol):
    """The inclusive instruction count of the function named `symbol` in a callgrind dump (0 if
    it never ran)."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if symbol in line:
            return int(line.split()[0].replace(",", ""))
    return 0


def callgrind_total(name):
    dumps = [f for f in os.listdir(tmp) if f.startswith(f"callgrind-{name}.out.")]
    total = 0
    with open(os.path.join(tmp, max(dumps))) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
                break
    return total


def instructions():
    """Instructions per request of one hop for ours, the floor (and the baseline binary, and the
    tracing contenders)."""
    port = BASE + 51
    cfg = write("callgrind.yaml", sidecar_yaml("inbound", port, APP, BASE + 52))
    hops = [("ours", [f"{BIN}/mesh-sidecar", "--config", cfg])]
    if BASELINE:
        hops.append(("base", [BASELINE, "--config", cfg]))
    # The tracing contenders' hop as the inbound one (it follows wrk's absent traceparent by its
    # own sampler). Counted right after the requests: the batch exports done by then (512 spans
    # each) are in the count, the last partial batch is not.
    hops += [(c, [f"{BIN}/mesh-sidecar", "--config", cfg] + trace_args(c, "inbound"))
             for c in TRACE_RATIOS if c in CONTENDERS]
    if ACCESS_LOG:
        hops.append(("ours+log", [f"{BIN}/mesh-sidecar", "--config", cfg, "--access-log",
                                  os.path.join(tmp, "access-callgrind.log")]))
    hops.append(("floor", [f"{BIN}/bench-floor", f"127.0.0.1:{port}", f"127.0.0.1:{APP}"]))
    res = {}
    for name, argv in hops:
        res[name] = instructions_per_request(name, argv, port)
        log(f"callgrind {name}: {res[name]:.0f} instructions per request")
    # The same hop for each RPC protocol that ran: client → RPC listener → bench-rpcapp.
    for proto in [p for p in rpc.PROTOCOLS if any(p == q for q, _ in SCENARIOS)]:
        name = f"ours {proto}"
        cfg = write(f"callgrind-{proto}.yaml",
                    rpc.sidecar_yaml("inbound", port, RPC_APP, BASE + 52, proto))
        res[name] = instructions_per_request(name.replace(" ", "-"),
                                             [f"{BIN}/mesh-sidecar", "--config", cfg], port,
                                             rpc_proto=proto)
        log(f"callgrind {name}: {res[name]:.0f} instructions per request")
    if H2_HOP:
        # The hop between sidecars as BENCH_HOP=h2 (or the h2c-h2 scenario) runs it: h2c in (32 streams on one
        # connection), HTTP/2 with prior knowledge out, for ours and the floor.
        cfg2 = write("callgrind-h2.yaml",
                     sidecar_yaml("inbound", port, APP, BASE + 52, protocol="http2"))
        h2hops = [("ours h2", [f"{BIN}/mesh-sidecar", "--config", cfg2])]
        if BASELINE:
            h2hops.append(("base h2", [BASELINE, "--config", cfg2]))
        h2hops.append(("floor h2", [f"{BIN}/bench-floor", f"127.0.0.1:{port}",
                                    f"127.0.0.1:{APP}", "h2"]))
        for name, argv in h2hops:
            res[name] = instructions_per_request(name.replace(" ", "-"), argv, port, h2=True)
            log(f"callgrind {name}: {res[name]:.0f} instructions per request")
    return res


def sdk_overhead():
    """The SDK bench's figures: {"cpu": (bare, mesh) µs of process CPU per call (criterion
    medians, group sdk_call_cpu), "instr": (bare, mesh) instructions per call (callgrind, the
    difference of 1,000 and 3,000 calls, so the setup cancels out; less the rate limiter's
    one-time TSC calibration, `quanta::Calibration::calibrate`, which spins for a time and so
    varies by millions of instructions between runs, the noise of the raw totals)}."""
    # Pinned to one CPU (client and server threads share it): unpinned, the per-call CPU of a
    # run settles at one of two levels (~18 or ~45 µs here) by how the scheduler spreads the
    # two runtimes' threads, bare and mesh alike, which swamps a 5 % difference.
    out = subprocess.run(["taskset", "-c", str(NPROC - 1), SDK_BIN, "--bench", "--warm-up-time",
                          "1", "--measurement-time", "5", "sdk_call_cpu"], capture_output=True, text=True, check=True,
                         env={**os.environ, "CRITERION_HOME": os.path.join(tmp, "criterion")})
    med = {}
    for m in re.finditer(r"sdk_call_cpu/(\w+)\s+time:\s+\[\S+ \S+ (\S+) (\S+) ", out.stdout):
        scale = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}[m.group(3)]
        med[m.group(1)] = float(m.group(2)) * scale
    res = {}
    if len(med) == 2:
        res["cpu"] = (med["bare_hyper_client"], med["mesh_layer_over_hyper_client"])
        log(f"sdk cpu per call: bare {res['cpu'][0]:.1f} µs, mesh {res['cpu'][1]:.1f} µs")
    else:
        log(f"sdk bench printed no sdk_call_cpu medians:\n{out.stdout[-2000:]}")
    if CALLGRIND:
        per_call = []
        for kind in ("bare", "mesh"):
            totals = []
            for n in (1000, 3000):
                name = f"sdk-{kind}-{n}"
                out = os.path.join(tmp, f"callgrind-{name}.out.1")
                subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                SDK_BIN], env={**os.environ, "SDK_CALLS": f"{kind}:{n}"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                totals.append(callgrind_total(name)
                              - callgrind_inclusive(out, "quanta::Calibration::calibrate"))
            per_call.append((totals[1] - totals[0]) / 2000)
        res["instr"] = tuple(per_call)
        log(f"sdk instructions per call: bare {per_call[0]:.0f}, mesh {per_call[1]:.0f}")
    return res


def fmt_ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


def main():
    global PKI
    if MTLS:
        PKI = make_pki()
    load_start = open("/proc/loadavg").read().split()[:3]
    stolen = steal_ticks()
    start_app()
    start_sinks()
    try:
        results = {}  # (scenario, contender) -> [round results]
        handshakes = {}  # mTLS contender -> new connections per second into its inbound proxy
        for proto, conns in SCENARIOS:
            tag = f"{proto}-{conns}"
            chains = start_chains(tag, proto)
            wait_ready(list(chains), proto)
            log(f"{tag}: fresh chains answer; logs and configs in {tmp}")
            pids = {c: [p.pid for p in ps] for c, ps in chains.items()}
            for rnd in range(ROUNDS):
                # Alternate: rotate the order each round so no contender always goes first.
                k = rnd % len(CONTENDERS)
                order = [c for c in CONTENDERS[k:] + CONTENDERS[:k] if c in chains]
                for c in order:
                    r = measure(c, pids[c], proto, conns, DURATION)
                    results.setdefault((proto, conns, c), []).append(r)
                    log(f"{proto} c={conns} round {rnd + 1} {c:6}: {r['rps']:9.0f} req/s "
                        f"p50 {r['p50']:.3f} ms p99 {r['p99']:.3f} ms "
                        f"cpu {['%.2f' % x for x in r['cpu']]} s rss "
                        f"{['%.1f' % x for x in r['rss']]} MB (anon "
                        f"{['%.1f' % x for x in r['anon']]}, file "
                        f"{['%.1f' % x for x in r['file']]}) errors {r['errors']} "
                        f"steal {r['steal']:.0f} %")
            if MTLS and (proto, conns) == ("h1", 32):
                for c in ("ours+mtls", "envoy+mtls"):
                    if c in chains:
                        hs = measure_handshakes(c, pids[c][1], DURATION)
                        handshakes[c] = hs
                        log(f"{c}: {hs['rate']:.0f} mTLS handshakes/s, inbound CPU "
                            f"{hs['cpu_ms']:.3f} ms per handshake")
            if PROFILE and (proto, conns) == ("h1", 32) and "ours" in chains:
                profile(chains["ours"])
            stop([p for ps in chains.values() for p in ps])
        conn_rss = rpc_connections() if RPC_MODE and rpc.CONNS > 0 else {}
        load_end = open("/proc/loadavg").read().split()[:3]
        steal = steal_pct(stolen, steal_ticks())
        instr = instructions() if CALLGRIND else {}
        sdk = sdk_overhead() if SDK_BIN and not RPC_MODE else {}
        # Every sidecar flushed its spans on SIGTERM; give the sinks a report tick.
        time.sleep(1.5 if TRACING else 0)
        spans = {c: sink_spans(c) for c in TRACE_RATIOS if c in CONTENDERS}
    finally:
        stop([p for _, p in procs])
    write_markdown(results, load_start, load_end, steal, instr, spans, handshakes, conn_rss,
                   sdk)
    shutil.rmtree(tmp, ignore_errors=True)  # kept only when something failed


def summary(rounds):
    """Medians over rounds; CPU per 10,000 requests from the sums; the highest peak RSS."""
    n = len(rounds[0]["cpu"])
    reqs = sum(r["requests"] for r in rounds)
    return {
        "rps": statistics.median(r["rps"] for r in rounds),
        "rps_range": (min(r["rps"] for r in rounds), max(r["rps"] for r in rounds)),
        "p50": statistics.median(r["p50"] for r in rounds),
        "p99": statistics.median(r["p99"] for r in rounds),
        "cpu": [sum(r["cpu"][i] for r in rounds) / reqs * 10_000 for i in range(n)],
        "rss": [max(r["rss"][i] for r in rounds) for i in range(n)],
        "anon": [max(r["anon"][i] for r in rounds) for i in range(n)],
        "file": [max(r["file"][i] for r in rounds) for i in range(n)],
        "errors": sum(r["errors"] for r in rounds),
    }


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def envoy_version():
    out = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: \S+/([\d.]+)", out)
    return m.group(1) if m else "?"


def scenario_name(proto, conns):
    if rpc.is_rpc(proto):
        return rpc.scenario_name(proto, conns)
    return {"h1": f"HTTP/1.1 c={conns}", "h2c": f"h2c c={H2_CONNS} m=32",
            "h2c-h2": f"h2c c={H2_CONNS} m=32, HTTP/2 hop",
            "tcp": f"TCP (L4 hops, HTTP/1.1 inside) c={conns}"}[proto]


HOP_TEXT = {"h2": "HTTP/2 (prior knowledge, multiplexed on one connection)",
            "h1": "HTTP/1.1 keep-alive (a connection per request in flight)"}


def tracing_section(s, results, spans):
    """Tracing at 1 % and 100 % against the same sidecar without it, and what reached the sinks."""
    rows = [c for c in TRACE_RATIOS if c in CONTENDERS]
    if not rows or "ours" not in CONTENDERS:
        return []
    L = ["", "## Tracing cost", "",
         "The same mesh-sidecar binary with `--otlp-endpoint` and `--trace-sampling 0.01` / `1` "
         "on both hops (outbound CLIENT and inbound SERVER spans, W3C `traceparent` continued; "
         "wrk sends none, so the outbound hop starts each trace and the inbound hop follows its "
         "decision), each exporting over OTLP/gRPC to its own `bench-otlp-sink` (benches/floor/"
         "otlp_sink.rs: a tonic OTLP trace service that counts and drops spans; it runs on the "
         "same machine and its CPU is not in the sidecars' figures). Without `--otlp-endpoint` "
         "(row `ours`) the trace layer is not in the stack at all.", "",
         "| scenario | contender | req/s vs ours | p99 vs ours | CPU/req vs ours |",
         "|---|---|---:|---:|---:|"]
    for proto, conns in SCENARIOS:
        scen = scenario_name(proto, conns)
        o = s[(proto, conns, "ours")]
        for c in rows:
            x = s[(proto, conns, c)]
            L.append(f"| {scen} | {NAMES[c]} | {fmt_ratio(x['rps'], o['rps'])} | "
                     f"{fmt_ratio(x['p99'], o['p99'])} | "
                     f"{fmt_ratio(sum(x['cpu']), sum(o['cpu']))} |")
    L += ["", "| contender | requests measured (all scenarios, rounds) | spans the sink received "
          "| spans per measured request |", "|---|---:|---:|---:|"]
    for c in rows:
        reqs = sum(r["requests"] for (p, n, cc), rs in results.items() if cc == c for r in rs)
        got = spans.get(c, 0)
        L.append(f"| {NAMES[c]} | {reqs} | {got} | {got / reqs if reqs else 0:.3f} |")
    L += ["", "Two spans per request is everything (one per hop); the 1 s warm-up before each "
          "measurement adds spans the measured requests do not count, and a full export queue "
          "(2,048 spans) drops spans rather than slow a request."]
    return L


def goals_20(s, instr, sdk):
    """Issue #20's goals, met or missed, from this run's figures (those whose scenario ran)."""
    check = lambda ok: "met" if ok else "**missed**"
    rows = []
    have = lambda p, n, *cs: all((p, n, c) in s for c in cs)
    if have("h1", 32, "ours", "floor"):
        o, f = s[("h1", 32, "ours")], s[("h1", 32, "floor")]
        r = o["rps"] / f["rps"]
        rows.append(f"| req/s vs floor, HTTP/1.1 c=32 | ≥ 0.9x | {r:.2f}x | {check(r >= 0.9)} |")
    if have("h1", 32, "ours", "envoy"):
        o, e = s[("h1", 32, "ours")], s[("h1", 32, "envoy")]
        r, c = o["rps"] / e["rps"], sum(o["cpu"]) / sum(e["cpu"])
        rows.append(f"| req/s vs Envoy, HTTP/1.1 c=32 | ≥ 2.5x | {r:.2f}x | {check(r >= 2.5)} |")
        rows.append(f"| CPU per request vs Envoy, HTTP/1.1 c=32 | ≤ 0.3x | {c:.2f}x "
                    f"| {check(c <= 0.3)} |")
    if instr.get("ours") and instr.get("floor"):
        r = instr["ours"] / instr["floor"]
        rows.append(f"| instructions per request, one hop, vs floor (callgrind) | ≤ 1.2x | "
                    f"{instr['ours']:,.0f} / {instr['floor']:,.0f} = {r:.2f}x | {check(r <= 1.2)} |")
    if instr.get("ours h2") and instr.get("floor h2"):
        r = instr["ours h2"] / instr["floor h2"]
        rows.append(f"| instructions per request, one h2c → HTTP/2 hop, vs floor (callgrind) | "
                    f"≤ 1.2x | {instr['ours h2']:,.0f} / {instr['floor h2']:,.0f} = {r:.2f}x | "
                    f"{check(r <= 1.2)} |")
    for proto in ("h2c", "h2c-h2"):
        if have(proto, 32, "ours", "floor"):
            r = s[(proto, 32, "ours")]["rps"] / s[(proto, 32, "floor")]["rps"]
            rows.append(f"| req/s vs floor, h2c c={H2_CONNS} m=32, `BENCH_HOP={hop_of(proto)}` "
                        f"| ≥ 0.95x | {r:.2f}x | {check(r >= 0.95)} |")
    if have("h1", 256, "ours", "floor"):
        o, f = max(s[("h1", 256, "ours")]["rss"]), max(s[("h1", 256, "floor")]["rss"])
        r = o / f
        rows.append(f"| peak RSS at HTTP/1.1 c=256 vs floor (the larger proxy of each chain) | "
                    f"≤ 1.1x | {o:.1f} / {f:.1f} MB = {r:.2f}x | {check(r <= 1.1)} |")
    if sdk and "cpu" in sdk:
        (b, m) = sdk["cpu"]
        r = m / b - 1
        rows.append(f"| in-process SDK stack overhead on a real hyper client call, CPU "
                    f"(`sdk_call_cpu` medians pinned to one CPU, bare / MeshLayer) | ≤ 5 % | {b:.1f} / {m:.1f} µs "
                    f"= +{100 * r:.2f} % | {check(r <= 0.05)} |")
    if sdk and "instr" in sdk:
        (b, m) = sdk["instr"]
        rows.append(f"| the same, user-space instructions per call (callgrind, client and "
                    f"server) | | {b:,.0f} / {m:,.0f} = +{100 * (m / b - 1):.1f} % | |")
    if not rows:
        return []
    return ["", "## Goals of issue #20 (this run)", "",
            "The control plane's 10,000 subscribers are measured apart (benches/XDS_SCALE.md)."
            + ("" if sdk else " The SDK row needs `BENCH_SDK_BIN` (scripts/bench sets it)."), "",
            "| figure | goal | measured | |", "|---|---|---|---|"] + rows


def write_markdown(results, load_start, load_end, steal, instr, spans=None, handshakes=None,
                   conn_rss=None, sdk=None):
    s = {k: summary(v) for k, v in results.items()}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L = [
        "# RPC chain benchmark (bolt, dubbo)" if RPC_MODE else "# Sidecar chain benchmark",
        "",
        f"Generated by `./scripts/bench` on {now}. Machine: {NPROC} CPUs ({cpu_model()}), "
        f"kernel {os.uname().release}; load average {' '.join(load_start)} at the start, "
        f"{' '.join(load_end)} at the end (the run shares the machine with everything else on "
        f"it); the hypervisor took {steal:.0f} % of the CPUs' time during the run "
        f"(steal, /proc/stat), and the most in one measurement was "
        f"{max((r['steal'] for rs in results.values() for r in rs), default=0):.0f} %. "
        f"Envoy {envoy_version()}.",
        "",
        f"Topology: client → proxy → proxy → app on loopback (direct: client → app). "
        f"{WORKERS} worker thread(s) per proxy (Envoy `--concurrency {WORKERS}`, "
        f"`TOKIO_WORKER_THREADS={WORKERS}` for mesh-sidecar and the floor); the app has "
        f"{APP_WORKERS}. {DURATION} s per measurement after a 1 s warm-up, {ROUNDS} round(s), "
        f"contenders alternated; figures are medians over rounds (req/s range in brackets). "
        f"HTTP/1.1: wrk keep-alive; h2c: h2load, {H2_CONNS} connection(s) × 32 streams; "
        f"TCP: wrk keep-alive through opaque L4 hops (our `tcp_proxy` listeners, Envoy's "
        f"`tcp_proxy` filter; the floor has no L4 mode). "
        + (f"bolt and dubbo: bench-rpcload (benches/floor/rpcload.rs), C connections each "
           f"keeping {rpc.IN_FLIGHT} request(s) in flight, every response's kind, id and status "
           f"checked, against bench-rpcapp (an echo app for both protocols, a ~200-byte success "
           f"response per ~300-byte request); ours: RPC (`xprotocol`) listeners on both "
           f"sidecars, requests multiplexed over 2 upstream connections per endpoint (the "
           f"default `max_upstream_connections`); Envoy (dubbo only: it has no bolt codec): "
           f"its `generic_proxy` network filter with the dubbo codec and the generic router. "
           if any(rpc.is_rpc(p) for p, _ in SCENARIOS) else "")
        + f"The proxy-to-proxy hop is {HOP_TEXT[HOP]} for every contender (`BENCH_HOP={HOP}`)"
        + ("; in the rows marked \"HTTP/2 hop\" it is HTTP/2 (prior knowledge, multiplexed on "
           "one connection) for every contender"
           if HOP == "h1" and any(p == "h2c-h2" for p, _ in SCENARIOS) else "") + "; "
        f"the hop to the app is HTTP/1.1. CPU: utime+stime of each proxy process per "
        f"10,000 requests (outbound / inbound); RSS: peak (VmHWM, reset before each "
        f"measurement) of each proxy, and what the resident set was made of right after the "
        f"load: anonymous memory (heap, stacks) and file-backed pages (the binary's and the "
        f"libraries' code the kernel mapped in, shared with every other process running them). "
        f"Every scenario starts fresh proxy processes (all "
        f"contenders alike), so a peak is that scenario's own and not what an allocator kept "
        f"from an earlier one.",
        "",
        "| scenario | contender | req/s | p50 ms | p99 ms | CPU s / 10k req (out / in) "
        "| peak RSS MB (out / in) | of it anon + file MB (out / in) | errors |",
        "|---|---|---:|---:|---:|---|---|---|---:|",
    ]
    for proto, conns in SCENARIOS:
        scen = scenario_name(proto, conns)
        for c in CONTENDERS:
            if (proto, conns, c) not in s:
                continue
            x = s[(proto, conns, c)]
            lo, hi = x["rps_range"]
            rng = f" ({lo:.0f}–{hi:.0f})" if ROUNDS > 1 else ""
            cpu = " / ".join(f"{v:.3f}" for v in x["cpu"]) or "–"
            rss = " / ".join(f"{v:.1f}" for v in x["rss"]) or "–"
            split = " / ".join(f"{a:.1f} + {f:.1f}" for a, f in zip(x["anon"], x["file"])) or "–"
            L.append(f"| {scen} | {NAMES[c]} | {x['rps']:.0f}{rng} | {x['p50']:.3f} | "
                     f"{x['p99']:.3f} | {cpu} | {rss} | {split} | {x['errors']} |")
    # Ratios of ours against every other proxy that ran.
    others = [c for c in ("envoy", "floor", "base") if c in CONTENDERS]
    if "ours" in CONTENDERS and others:
        short = {"envoy": "Envoy", "floor": "floor", "base": "baseline"}
        head = " | ".join(f"req/s ours/{short[c]} | p99 ours/{short[c]} | CPU/req ours/{short[c]}"
                          for c in others)
        L += ["", "## Ratios", "", f"| scenario | {head} |",
              "|---|" + "---:|" * (3 * len(others))]
        for proto, conns in SCENARIOS:
            scen = scenario_name(proto, conns)
            o = s[(proto, conns, "ours")]
            cells = []
            for c in others:
                x = s.get((proto, conns, c))
                if x is None:
                    cells += ["–", "–", "–"]
                    continue
                cells += [fmt_ratio(o["rps"], x["rps"]), fmt_ratio(o["p99"], x["p99"]),
                          fmt_ratio(sum(o["cpu"]), sum(x["cpu"]))]
            L.append(f"| {scen} | " + " | ".join(cells) + " |")
    # What an access log costs each proxy: the same chain with and without it, side by side.
    pairs = [(a, b) for a, b in (("ours", "ours+log"), ("envoy", "envoy+log"))
             if a in CONTENDERS and b in CONTENDERS]
    if pairs:
        L += ["", "## Access-log cost (with / without, same proxy, same run)", "",
              "Every proxy of the chain writes Envoy's default text format to a file "
              "(`--access-log PATH` for mesh-sidecar, `envoy.access_loggers.file` for Envoy).", "",
              "| scenario | proxy | req/s with/without | p99 with/without "
              "| CPU/req with/without |", "|---|---|---:|---:|---:|"]
        for proto, conns in SCENARIOS:
            scen = scenario_name(proto, conns)
            for a, b in pairs:
                x, y = s[(proto, conns, a)], s[(proto, conns, b)]
                L.append(f"| {scen} | {NAMES[a].replace(' ×2', '')} | "
                         f"{fmt_ratio(y['rps'], x['rps'])} | {fmt_ratio(y['p99'], x['p99'])} | "
                         f"{fmt_ratio(sum(y['cpu']), sum(x['cpu']))} |")
    if all(c in CONTENDERS for c in ("ours+mtls", "envoy+mtls")):
        L += ["", "## mTLS between the proxies (same run)", "",
              "The proxy-to-proxy hop over mutual TLS: one bench CA, EC P-256 certificates "
              "with SPIFFE URI SANs, the inbound proxy requiring a client certificate and the "
              "outbound one verifying the inbound one's URI SAN (static certificates for both "
              "proxies: mesh-sidecar's `secrets:`, Envoy's `tls_certificates` files). "
              "Connections are kept alive, so these rows are the per-request cost of "
              "encryption; handshakes are counted apart.", "",
              "| scenario | req/s ours mTLS / Envoy mTLS | p99 ours mTLS / Envoy mTLS "
              "| CPU/req ours mTLS / Envoy mTLS | req/s ours mTLS / ours plaintext "
              "| CPU/req ours mTLS / ours plaintext |", "|---|---:|---:|---:|---:|---:|"]
        for proto, conns in SCENARIOS:
            o, e = s.get((proto, conns, "ours+mtls")), s.get((proto, conns, "envoy+mtls"))
            if o is None or e is None:
                continue
            p = s.get((proto, conns, "ours"))
            plain = ([fmt_ratio(o["rps"], p["rps"]), fmt_ratio(sum(o["cpu"]), sum(p["cpu"]))]
                     if p else ["–", "–"])
            L.append(f"| {scenario_name(proto, conns)} | {fmt_ratio(o['rps'], e['rps'])} | "
                     f"{fmt_ratio(o['p99'], e['p99'])} | "
                     f"{fmt_ratio(sum(o['cpu']), sum(e['cpu']))} | " + " | ".join(plain) + " |")
        if ("h1", 32) in SCENARIOS:
            o, e = s[("h1", 32, "ours+mtls")], s[("h1", 32, "envoy+mtls")]
            ok = o["rps"] >= 2 * e["rps"] and sum(o["cpu"]) <= 0.5 * sum(e["cpu"])
            L += ["", f"Goal (issue #15), HTTP/1.1 c=32: our mTLS chain ≥ 2x Envoy's req/s at "
                  f"≤ 0.5x its CPU per request: {o['rps'] / e['rps']:.2f}x req/s, "
                  f"{sum(o['cpu']) / sum(e['cpu']):.2f}x CPU — "
                  f"{'met' if ok else '**missed**'}."]
        if handshakes:
            L += ["", "New mTLS connections into the inbound proxy (`openssl s_time -new`, one "
                  "client process, TLS 1.3, client certificate), during the HTTP/1.1 c=32 "
                  "scenario's chains:", "", "| proxy | handshakes/s | inbound CPU ms per handshake |",
                  "|---|---:|---:|"]
            for c, hs in handshakes.items():
                L.append(f"| {NAMES[c]} | {hs['rate']:.0f} | {hs['cpu_ms']:.3f} |")
    if all(c in CONTENDERS for c in ("ours", "envoy", "floor")) and ("h1", 32) in SCENARIOS:
        o, e, f = (s[("h1", 32, c)] for c in ("ours", "envoy", "floor"))
        rss = max(max(s[(p, n, "ours")]["rss"]) for p, n in SCENARIOS)
        check = lambda ok: "met" if ok else "**missed**"
        L += [
            "",
            "## Targets (HTTP/1.1, 32 connections, equal workers)",
            "",
            "| target | measured | |",
            "|---|---|---|",
            f"| req/s ≥ 2x Envoy | {o['rps'] / e['rps']:.2f}x "
            f"| {check(o['rps'] >= 2 * e['rps'])} |",
            f"| p99 ≤ 0.5x Envoy | {o['p99'] / e['p99']:.2f}x "
            f"| {check(o['p99'] <= 0.5 * e['p99'])} |",
            f"| req/s ≥ 80 % of the floor | {100 * o['rps'] / f['rps']:.0f} % "
            f"| {check(o['rps'] >= 0.8 * f['rps'])} |",
            f"| CPU per request ≤ 0.5x Envoy | {sum(o['cpu']) / sum(e['cpu']):.2f}x "
            f"| {check(sum(o['cpu']) <= 0.5 * sum(e['cpu']))} |",
            f"| peak RSS < 15 MB per sidecar (HTTP/1.1, 32 connections) | {max(o['rss']):.1f} MB "
            f"| {check(max(o['rss']) < 15)} |",
            f"| peak RSS < 15 MB per sidecar (any scenario) | {rss:.1f} MB | {check(rss < 15)} |",
            "",
        ]
    L += tracing_section(s, results, spans or {})
    if RPC_MODE or any(rpc.is_rpc(p) for p, _ in SCENARIOS):
        L += rpc.comparison(s, SCENARIOS)
        L += rpc.connections_section(conn_rss or {})
        L += rpc.instructions_section(instr)
    if instr and not RPC_MODE:
        f = instr.get("floor")
        L += ["", "## Instructions per request (callgrind, one hop)", "",
              "User-space instructions of one proxy (client → proxy → app, HTTP/1.1 keep-alive, "
              "8 connections, 3,000 requests after a 500-request warm-up): a count that does not "
              "depend on the load of the shared machine. Kernel time (the syscalls, the same for "
              "ours and the floor) is not in it." + (" The h2c → h2 rows (`BENCH_HOP=h2`): h2c "
              "in on one connection, 32 streams at a time, HTTP/2 with prior knowledge out to "
              "the app, each against the floor doing the same." if H2_HOP else ""), "",
              "| proxy | instructions / request | vs floor |", "|---|---:|---:|"]
        for name, v in instr.items():
            base, _, h2 = name.partition(" ")
            if rpc.is_rpc(h2):
                continue  # in the RPC section
            label = NAMES[base].replace(" ×2", "") + (", h2c → h2 (1 connection × 32 streams)"
                                                      if h2 else "")
            floor = instr.get("floor h2") if h2 else f
            L.append(f"| {label} | {v:,.0f} | {fmt_ratio(v, floor)} |")
    if not RPC_MODE:
        L += goals_20(s, instr, sdk)
    L.append("")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        fh.write("\n".join(L))
    print("\n".join(L))
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()

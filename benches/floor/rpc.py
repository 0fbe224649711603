"""The RPC rows of the chain benchmark (bolt and dubbo), imported by chain.py: the proxies'
configs, runs of our load generator (bench-rpcload) and the markdown of an RPC run
(BENCH_RPC=1: benches/RESULTS-rpc.md).

Scenarios `bolt:C` and `dubbo:C`: bench-rpcload with C connections, each keeping
BENCH_RPC_IN_FLIGHT requests in flight (1: like wrk's keep-alive connections in `h1:C`), against
bench-rpcapp (an echo server for both protocols). Contenders: `direct`, `ours` (two mesh-sidecars
with `xprotocol` listeners; `base` too when BENCH_BASELINE_BIN is set) and, for dubbo only,
`envoy` (Envoy's `generic_proxy` network filter with its dubbo codec; Envoy has no bolt codec).
"""

import os
import re
import subprocess
import time

PROTOCOLS = ("bolt", "dubbo")
IN_FLIGHT = int(os.environ.get("BENCH_RPC_IN_FLIGHT", "1"))
# Connections opened for the RSS-per-connection figures.
CONNS = int(os.environ.get("BENCH_RPC_CONNS", "1000"))
# The contenders that can carry each protocol.
CARRIERS = {"bolt": ("direct", "ours", "base"), "dubbo": ("direct", "ours", "base", "envoy")}


def is_rpc(proto):
    return proto in PROTOCOLS


def sidecar_yaml(name, listen, upstream, admin, protocol):
    """A sidecar with one RPC listener routing every service to the next hop."""
    return f"""admin: 127.0.0.1:{admin}
listeners:
  - name: {name}
    address: 127.0.0.1:{listen}
    direction: {name}
    xprotocol:
      protocol: {protocol}
      route_config:
        name: {name}
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - name: all
                match: {{ prefix: "/" }}
                route: {{ cluster: next }}
clusters:
  - name: next
    load_assignment:
      endpoints:
        - endpoints: [ {{ address: "127.0.0.1:{upstream}" }} ]
"""


def envoy_yaml(listen, upstream, admin):
    """Envoy's generic proxy with the dubbo codec, every request routed to the next hop."""
    return f"""admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
    - name: listener
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.generic_proxy
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.generic_proxy.v3.GenericProxy
                stat_prefix: rpc
                codec_config:
                  name: envoy.generic_proxy.codecs.dubbo
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.filters.network.generic_proxy.codecs.dubbo.v3.DubboCodecConfig
                filters:
                  - name: envoy.filters.generic.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.network.generic_proxy.router.v3.Router
                route_config:
                  name: all
                  virtual_hosts:
                    - name: all
                      hosts: ["*"]
                      routes:
                        on_no_match:
                          action:
                            name: route
                            typed_config:
                              "@type": type.googleapis.com/envoy.extensions.filters.network.generic_proxy.action.v3.RouteAction
                              cluster: next
  clusters:
    - name: next
      type: STATIC
      connect_timeout: 5s
      load_assignment:
        cluster_name: next
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }}
"""


def load_argv(bin_dir, protocol, port, conns, secs=None, requests=None, in_flight=IN_FLIGHT,
              hold=None, body=None):
    argv = [f"{bin_dir}/bench-rpcload", protocol, f"127.0.0.1:{port}", "--connections",
            str(conns), "--in-flight", str(in_flight)]
    if secs is not None:
        argv += ["--duration", str(secs)]
    if requests is not None:
        argv += ["--requests", str(requests)]
    if hold is not None:
        argv += ["--hold", str(hold)]
    if body is not None:
        argv += ["--body-bytes", str(body)]
    return argv


def parse(out):
    """bench-rpcload's result line as chain.py's measurement fields."""
    m = re.search(r"requests=(\d+) errors=(\d+) seconds=([\d.]+) rps=([\d.]+) "
                  r"p50_ms=(\S+) p99_ms=(\S+)", out)
    if not m:
        raise RuntimeError(f"no bench-rpcload result in: {out!r}")
    return {"requests": int(m.group(1)), "errors": int(m.group(2)), "rps": float(m.group(4)),
            "p50": float(m.group(5)), "p99": float(m.group(6))}


def run(bin_dir, protocol, port, conns, secs=None, requests=None, in_flight=IN_FLIGHT,
        quiet=False):
    p = subprocess.run(load_argv(bin_dir, protocol, port, conns, secs, requests, in_flight),
                       capture_output=True, text=True, timeout=(secs or 0) + 180)
    res = parse(p.stdout)
    if res["errors"] and not quiet:
        print(f"    bench-rpcload: {p.stderr.strip()}", flush=True)
    return res


def answers(bin_dir, protocol, port):
    """Whether one request through `port` gets a success response."""
    try:
        r = run(bin_dir, protocol, port, 1, requests=1, quiet=True)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return r["requests"] == 1 and r["errors"] == 0


def hold(bin_dir, protocol, port, conns, requests, secs, on_hold, body=None):
    """Opens `conns` connections, sends `requests` requests spread over them (0: none), then
    keeps them open, idle, for `secs` seconds; calls `on_hold()` while they are held and returns
    what it returned (and the load result)."""
    p = subprocess.Popen(load_argv(bin_dir, protocol, port, conns, requests=requests, hold=secs,
                                   body=body),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got = None
    try:
        for line in p.stdout:
            if line.startswith("holding"):
                time.sleep(min(1.0, secs / 3))  # the proxy has accepted and read by now
                got = on_hold()
                break
        out, err = p.communicate(timeout=secs + 60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    res = parse(out)
    if got is None or res["errors"]:
        raise RuntimeError(f"bench-rpcload --hold: {err.strip()}")
    return got, res


def scenario_name(proto, conns):
    return f"{proto} c={conns} × {IN_FLIGHT} in flight"


def cpu_per_req(x):
    return sum(x["cpu"])


def comparison(s, scenarios):
    """Per-request CPU of an RPC through our two sidecars against an HTTP/1.1 request (issue #17's
    goal: bolt ≤ HTTP/1.1), and each RPC row against direct and Envoy."""
    L = []
    h1 = next(((p, n) for p, n in scenarios if p == "h1" and (p, n, "ours") in s), None)
    rows = [(p, n) for p, n in scenarios if is_rpc(p) and (p, n, "ours") in s]
    if h1 and rows:
        o = s[(*h1, "ours")]
        L += ["", f"## RPC against HTTP/1.1 through our sidecars (same run)", "",
              f"CPU seconds per 10,000 requests of both sidecars together (outbound + inbound), "
              f"against HTTP/1.1 c={h1[1]} (wrk). Goal of issue #17: a bolt request costs no more "
              f"CPU than an HTTP/1.1 request.", "",
              "| scenario | CPU s / 10k req, out + in | vs HTTP/1.1 | req/s vs HTTP/1.1 "
              "| p99 vs HTTP/1.1 | |", "|---|---:|---:|---:|---:|---|"]
        L.append(f"| HTTP/1.1 c={h1[1]} | {cpu_per_req(o):.3f} | 1.00x | 1.00x | 1.00x | |")
        for p, n in rows:
            x = s[(p, n, "ours")]
            r = cpu_per_req(x) / cpu_per_req(o)
            verdict = ("goal met" if r <= 1.0 else "**goal missed**") if p == "bolt" else ""
            L.append(f"| {scenario_name(p, n)} | {cpu_per_req(x):.3f} | {r:.2f}x | "
                     f"{x['rps'] / o['rps']:.2f}x | {x['p99'] / o['p99']:.2f}x | {verdict} |")
    others = [(p, n, c) for p, n in rows for c in ("direct", "envoy") if (p, n, c) in s]
    if others:
        L += ["", "## Our sidecars against direct and Envoy (RPC rows)", "",
              "| scenario | against | req/s ours/it | p99 ours/it | CPU/req ours/Envoy |",
              "|---|---|---:|---:|---:|"]
        for p, n, c in others:
            o, x = s[(p, n, "ours")], s[(p, n, c)]
            cpu = f"{cpu_per_req(o) / cpu_per_req(x):.2f}x" if c == "envoy" else "–"
            L.append(f"| {scenario_name(p, n)} | {c} | {o['rps'] / x['rps']:.2f}x | "
                     f"{o['p99'] / x['p99']:.2f}x | {cpu} |")
    return L


def connections_section(conn):
    """The RSS-per-connection table from chain.py's rpc_connections()."""
    if not conn:
        return []
    L = ["", "## RSS per RPC connection (bolt, into the outbound sidecar)", "",
         "A fresh bolt chain (our two sidecars → bench-rpcapp) per phase and binary, warmed by "
         "100 requests on one connection; VmRSS of each sidecar read before and while the "
         "connections are held open, idle (idle phases), or its peak (VmHWM, reset first) under "
         "load (active). The inbound sidecar sees only the outbound one's few multiplexed "
         "upstream connections, so the per-connection cost is the outbound's. The 256 KiB phase "
         "shows what a connection keeps after one large frame.", "",
         "| phase | sidecar | connections | outbound RSS before → during, MB "
         "| KB per connection (outbound) | inbound RSS before → during, MB | load |",
         "|---|---|---:|---|---:|---|---|"]
    for (name, contender), x in conn.items():
        (ob, od), (ib, idur), n = x["out"], x["in"], x["conns"]
        label = "this build" if contender == "ours" else "baseline"
        L.append(f"| {name} | {label} | {n} | {ob / 1024:.1f} → {od / 1024:.1f} | "
                 f"{(od - ob) / n:.1f} | {ib / 1024:.1f} → {idur / 1024:.1f} | {x['load']} |")
    return L


def instructions_section(instr):
    if not instr.get("ours bolt"):
        return []
    L = ["", "## Instructions per request (callgrind, one hop)", "",
         "User-space instructions of one mesh-sidecar (client → sidecar → app), 8 connections, "
         "3,000 requests after a 500-request warm-up: HTTP/1.1 keep-alive (h2load --h1) against "
         "bolt (bench-rpcload, one request in flight per connection). Unlike req/s and CPU "
         "seconds, the machine's load does not move this count.", "",
         "| hop | instructions / request | vs HTTP/1.1 |", "|---|---:|---:|"]
    h1 = instr.get("ours")
    for key, label in (("ours", "HTTP/1.1"), ("ours bolt", "bolt"), ("ours dubbo", "dubbo"),
                       ("floor", "floor (hyper), HTTP/1.1")):
        if key in instr:
            ratio = f"{instr[key] / h1:.2f}x" if h1 else "–"
            L.append(f"| {label} | {instr[key]:,.0f} | {ratio} |")
    return L

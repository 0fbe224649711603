#!/usr/bin/env python3
"""The soak: a dynamic mesh under steady load and config churn, sampled for leaks.

Run by ./scripts/soak (which installs wrk and builds the release binaries): mesh-control-plane
serving a mesh.yaml it polls, two mesh-sidecars fed by it (client-1: wrk calls its outbound
listener; hello-1: its inbound listener hands calls to bench-app), wrk for the whole run, and a
rewrite of mesh.yaml every SOAK_CHURN seconds that every sidecar receives (route weights, a
rate-limit value, a service added or removed). Every SOAK_SAMPLE seconds it reads, per process,
VmRSS and Threads (/proc/PID/status), open fds (/proc/PID/fd) and alive Tokio tasks (the
`*_runtime_alive_tasks` gauge on the admin /metrics), and each sidecar's xDS updates accepted
(/xds). Writes a markdown table (SOAK_OUT) with a summary judging flatness.
"""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.environ["SOAK_ROOT"]
BIN = os.environ["SOAK_BIN_DIR"]
DURATION = int(os.environ.get("SOAK_DURATION", "600"))
CHURN = float(os.environ.get("SOAK_CHURN", "5"))
SAMPLE = float(os.environ.get("SOAK_SAMPLE", "10"))
CONNS = int(os.environ.get("SOAK_CONNS", "32"))
WORKERS = os.environ.get("SOAK_WORKERS", "1")
BASE = int(os.environ.get("SOAK_PORT_BASE", "18700"))
OUT = os.environ.get("SOAK_OUT", os.path.join(ROOT, "benches", "SOAK.md"))
# The window compared at both ends, and the flatness criterion (see the note in SOAK.md).
WINDOW = min(60.0, DURATION / 3)
TOLERANCE = 0.10
SLACK = {"rss_kb": 512, "fds": 2, "threads": 0, "tasks": 2}

APP, XDS, CP_ADMIN = BASE, BASE + 1, BASE + 2
CLIENT = {"out": BASE + 3, "in": BASE + 4, "app": BASE + 5, "admin": BASE + 6}
HELLO = {"out": BASE + 7, "in": BASE + 8, "admin": BASE + 9}
EXTRA = BASE + 10  # the churned service's endpoint: never called, never bound

MESH = """\
# Written by benches/soak/soak.py, churn step {step}.
services:
  - name: hello
    aliases: ["*"]
    timeout: 5s
    rate_limit:
      token_bucket: {{ max_tokens: {tokens}, tokens_per_fill: {tokens}, fill_interval: 1s }}
    endpoints:
      - address: 127.0.0.1:{hello_in}
    routes:
      - name: hello-default
        match: {{ prefix: / }}
        route:
          weighted_clusters:
            - {{ name: hello, weight: {weight} }}
            - {{ name: hello-canary, weight: {canary} }}
  - name: hello-canary
    endpoints:
      - address: 127.0.0.1:{hello_in}
{extra}
nodes:
  - id: hello-1
    service: hello
    listeners: {{ outbound: 127.0.0.1:{hello_out}, inbound: 127.0.0.1:{hello_in}, local_app: 127.0.0.1:{app} }}
  - id: client-1
    listeners: {{ outbound: 127.0.0.1:{client_out}, inbound: 127.0.0.1:{client_in}, local_app: 127.0.0.1:{client_app} }}
"""


def mesh_yaml(step):
    """The mesh of churn step `step`: each step changes both nodes' routes (weights), the
    inbound rate limit of hello-1, and adds or removes the `extra` service (a cluster, its
    endpoints and a route table entry on both nodes). The limit stays far above the load."""
    extra = ""
    if step % 2 == 1:
        extra = f"  - name: extra-{step}\n    endpoints:\n      - address: 127.0.0.1:{EXTRA}\n"
    weight = (90, 70, 50)[step % 3]
    return MESH.format(step=step, tokens=10_000_000 + step, weight=weight, canary=100 - weight,
                       extra=extra, hello_in=HELLO["in"], hello_out=HELLO["out"], app=APP,
                       client_out=CLIENT["out"], client_in=CLIENT["in"],
                       client_app=CLIENT["app"])


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def http_get(port, path, timeout=2.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_for(what, check, limit=30.0):
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError as e:
            last = e
        time.sleep(0.2)
    sys.exit(f"ERROR: {what} not ready after {limit:.0f} s ({last})")


PROCS = {}


def spawn(name, argv, logdir, env=None):
    log = open(os.path.join(logdir, f"{name}.log"), "w")
    PROCS[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    return PROCS[name]


def stop_all():
    for p in PROCS.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in PROCS.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def proc_sample(pid):
    status = open(f"/proc/{pid}/status").read()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
    return {"rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads}


def gauge(port, name):
    _, text = http_get(port, "/metrics")
    m = re.search(rf"^{name} (\d+)", text, re.M)
    return int(m.group(1)) if m else None


def xds_updates(port):
    """Updates a sidecar accepted and rejected over all types, and its per-type versions."""
    _, text = http_get(port, "/xds")
    types = json.loads(text)["types"]
    acks = sum(t["acks"] for t in types.values())
    nacks = sum(t["nacks"] for t in types.values())
    return acks, nacks, {k.rsplit(".", 1)[-1]: t["version"] for k, t in types.items()}


# The control plane's /snapshots type names → the last part of the type URLs a sidecar's /xds
# is keyed by.
TYPE_NAMES = {"cluster": "Cluster", "endpoint": "ClusterLoadAssignment", "listener": "Listener",
              "route": "RouteConfiguration", "secret": "Secret", "runtime": "Runtime"}

# name → (admin port, task gauge)
WATCHED = {
    "control-plane": (CP_ADMIN, "xds_runtime_alive_tasks"),
    "client-1": (CLIENT["admin"], "mesh_runtime_alive_tasks"),
    "hello-1": (HELLO["admin"], "mesh_runtime_alive_tasks"),
}


def sample(t):
    row = {"t": t}
    for name, (port, task_gauge) in WATCHED.items():
        s = proc_sample(PROCS[name].pid)
        s["tasks"] = gauge(port, task_gauge)
        row[name] = s
    for name in ("client-1", "hello-1"):
        row[name]["acks"], row[name]["nacks"], _ = xds_updates(WATCHED[name][0])
    return row


def parse_wrk(text):
    def num(pattern):
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    return {
        "requests": num(r"(\d+) requests in"),
        "non2xx": num(r"Non-2xx or 3xx responses: (\d+)"),
        "socket": [int(x) for x in errors.groups()] if errors else [0, 0, 0, 0],
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": re.search(r"50%\s+(\S+)", text).group(1),
        "p99": re.search(r"99%\s+(\S+)", text).group(1),
    }


def slope_per_min(points):
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = zip(*points)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def summarize(rows, name, key):
    pts = [(r["t"], r[name][key]) for r in rows if r[name][key] is not None]
    first = [v for t, v in pts if t <= WINDOW]
    last = [v for t, v in pts if t >= DURATION - WINDOW]
    f, l = statistics.median(first), statistics.median(last)
    flat = l <= max(f * (1 + TOLERANCE), f + SLACK[key])
    after = [(t, v) for t, v in pts if t > WINDOW]
    return {"first": f, "last": l, "max": max(v for _, v in pts),
            "slope": slope_per_min(after), "flat": flat}


def fmt(key, v):
    if v is None:
        return "–"
    return f"{v / 1024:.1f}" if key == "rss_kb" else f"{v:g}"


def check_ports_free():
    for port in range(BASE, BASE + 11):
        with socket.socket() as s:
            # As the servers bind (SO_REUSEADDR): an earlier run's TIME_WAIT is no conflict.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                sys.exit(f"ERROR: port {port} is taken ({e}); set SOAK_PORT_BASE")


def main():
    check_ports_free()
    work = tempfile.mkdtemp(prefix="mesh-soak-")
    mesh = os.path.join(work, "mesh.yaml")
    step = 0
    write_atomic(mesh, mesh_yaml(step))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = open("/proc/loadavg").read().split()[:3]
    wrk_out = os.path.join(work, "wrk.txt")
    try:
        spawn("app", [f"{BIN}/bench-app", f"127.0.0.1:{APP}"], work)
        spawn("control-plane", [f"{BIN}/mesh-control-plane", "--config", mesh,
                                "--listen", f"127.0.0.1:{XDS}",
                                "--admin", f"127.0.0.1:{CP_ADMIN}"], work)
        wait_for("control plane", lambda: http_get(CP_ADMIN, "/healthz")[0] == 200)
        for node, ports in (("hello-1", HELLO), ("client-1", CLIENT)):
            spawn(node, [f"{BIN}/mesh-sidecar", "--xds", f"http://127.0.0.1:{XDS}",
                         "--node-id", node, "--admin", f"127.0.0.1:{ports['admin']}"], work,
                  env={"TOKIO_WORKER_THREADS": WORKERS, "RUST_LOG": "warn"})
        for node in ("hello-1", "client-1"):
            port = WATCHED[node][0]
            wait_for(f"{node} /ready", lambda port=port: http_get(port, "/ready")[0] == 200)
        wait_for("a request through both sidecars",
                 lambda: http_get(CLIENT["out"], "/")[0] == 200)

        print(f"==> soak: {DURATION} s of wrk -c{CONNS}, churn every {CHURN:g} s, "
              f"samples every {SAMPLE:g} s (logs in {work})", flush=True)
        wrk = subprocess.Popen(["wrk", "-t", "1", "-c", str(CONNS), "-d", f"{DURATION}s",
                                "--latency", f"http://127.0.0.1:{CLIENT['out']}/"],
                               stdout=open(wrk_out, "w"), stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        rows, next_churn, next_sample = [], CHURN, SAMPLE
        while True:
            now = time.monotonic() - t0
            if now >= DURATION:
                break
            for name, p in PROCS.items():
                if p.poll() is not None:
                    sys.exit(f"ERROR: {name} exited with {p.returncode} at {now:.0f} s")
            if now >= next_churn:
                step += 1
                write_atomic(mesh, mesh_yaml(step))
                next_churn += CHURN
            if now >= next_sample:
                rows.append(sample(round(now)))
                r = rows[-1]
                print(f"    t={r['t']:>4}s " + "  ".join(
                    f"{n}: {r[n]['rss_kb'] / 1024:.1f} MB {r[n]['fds']} fds "
                    f"{r[n]['threads']} thr {r[n]['tasks']} tasks" for n in WATCHED), flush=True)
                next_sample += SAMPLE
            time.sleep(max(0.05, min(next_churn, next_sample) - (time.monotonic() - t0)))
        wrk.wait(timeout=60)
        time.sleep(1)  # the control plane polls the file every 200 ms: let it apply the last step
        # The last step must reach both sidecars: their versions equal the control plane's.
        cp_versions = {d["node"]: {TYPE_NAMES.get(t["type"], t["type"]): t["version"]
                                   for t in (d["set"] or [])}
                       for d in json.loads(http_get(CP_ADMIN, "/snapshots")[1])["nodes"]}
        converged = {}
        for node in ("client-1", "hello-1"):
            def same(node=node):
                _, _, versions = xds_updates(WATCHED[node][0])
                want = cp_versions.get(node, {})
                return bool(want) and all(versions.get(k) == v for k, v in want.items())
            try:
                wait_for(f"{node} at the control plane's last versions", same, limit=15)
                converged[node] = True
            except SystemExit as e:
                print(e, file=sys.stderr)
                converged[node] = False
        final = {n: xds_updates(WATCHED[n][0]) for n in ("client-1", "hello-1")}
    finally:
        stop_all()
    wrk_text = open(wrk_out).read()
    print(wrk_text)
    res = parse_wrk(wrk_text)
    load_end = open("/proc/loadavg").read().split()[:3]
    write_report(rows, res, step, final, converged, cp_versions, started, load_start, load_end)
    shutil.rmtree(work, ignore_errors=True)


def write_report(rows, res, steps, final, converged, cp_versions, started, load_start,
                 load_end):
    keys = [("rss_kb", "RSS MB"), ("fds", "fds"), ("threads", "threads"), ("tasks", "tasks")]
    names = list(WATCHED)
    out = [
        "# Soak: steady load with config churn",
        "",
        f"Generated by `./scripts/soak` on {started}. Machine: {os.cpu_count()} CPUs, load "
        f"average {' '.join(load_start)} at the start, {' '.join(load_end)} at the end (shared "
        "with other work: req/s is noisy; flatness is what this measures).",
        "",
        f"Topology: wrk (`-t1 -c{CONNS}`, HTTP/1.1 keep-alive, {DURATION} s) → client-1 "
        "mesh-sidecar (outbound) → hello-1 mesh-sidecar (inbound) → bench-app, both sidecars "
        f"dynamic (`TOKIO_WORKER_THREADS={WORKERS}`), fed over ADS by mesh-control-plane "
        f"serving a mesh.yaml it polls. Every {CHURN:g} s the file is rewritten: the route's "
        "weights between `hello` and `hello-canary` (90/10, 70/30, 50/50), hello's inbound "
        "rate-limit value, and a service `extra-N` added (odd steps) or removed (even steps). "
        f"Every {SAMPLE:g} s, per process: VmRSS, open fds (`/proc/PID/fd`), threads, and Tokio "
        "tasks alive (`mesh_runtime_alive_tasks` / `xds_runtime_alive_tasks` on the admin "
        "`/metrics`).",
        "",
        "## Summary",
        "",
        f"First and last {WINDOW:g} s: medians of the samples in them. Slope: least squares "
        f"over the samples after the first {WINDOW:g} s, per minute. Flat: the last median is "
        f"at most {TOLERANCE:.0%} above the first, or within "
        + f"{SLACK['rss_kb'] / 1024:g} MB RSS, {SLACK['fds']} fds, {SLACK['threads']} threads, "
        f"{SLACK['tasks']} tasks"
        + " of it (small integer counts move by a connection or two).",
        "",
        "| process | metric | first | last | max | slope / min | flat |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    all_flat = True
    for n in names:
        for k, label in keys:
            s = summarize(rows, n, k)
            all_flat &= s["flat"]
            slope = f"{s['slope'] / 1024:+.3f}" if k == "rss_kb" else f"{s['slope']:+.2f}"
            out.append(f"| {n} | {label} | {fmt(k, s['first'])} | {fmt(k, s['last'])} | "
                       f"{fmt(k, s['max'])} | {slope} | {'yes' if s['flat'] else '**no**'} |")
    sock = res["socket"]
    out += [
        "",
        f"Verdict: {'**flat**' if all_flat else '**not flat**'} by the criterion above.",
        "",
        f"Load: {res['requests']:,} requests, {res['rps']:.0f} req/s, p50 {res['p50']}, "
        f"p99 {res['p99']}; errors: {res['non2xx']} non-2xx, socket errors connect {sock[0]}, "
        f"read {sock[1]}, write {sock[2]}, timeout {sock[3]}.",
        "",
        f"Config churn: {steps} rewrites of mesh.yaml. xDS updates accepted (ACKs over all "
        "types) / rejected (NACKs): "
        + "; ".join(f"{n} {final[n][0]} / {final[n][1]}" for n in final)
        + ". At the end each sidecar held the control plane's last versions: "
        + ", ".join(f"{n} {'yes' if converged[n] else '**no**'}" for n in converged)
        + " (" + "; ".join(f"{n}: " + ", ".join(f"{k} {v}" for k, v in sorted(vs.items()))
                           for n, vs in sorted(cp_versions.items()) if n in final) + ").",
        "",
        "## Samples",
        "",
        "RSS in MB; t in seconds since the load started; acks: the sidecar's xDS updates "
        "accepted so far.",
        "",
        "| t | " + " | ".join(f"{n} {label}" for n in names for _, label in keys)
        + " | client-1 acks | hello-1 acks |",
        "|---:|" + "---:|" * (len(names) * len(keys) + 2),
    ]
    for r in rows:
        out.append(f"| {r['t']} | " + " | ".join(fmt(k, r[n][k]) for n in names for k, _ in keys)
                   + f" | {r['client-1']['acks']} | {r['hello-1']['acks']} |")
    note = ""
    if os.path.exists(OUT):
        old = open(OUT).read()
        i = old.find("\n## Notes")
        note = old[i:] if i >= 0 else ""
    os.makedirs(os.path.dirname(OUT) or ".", exist_ok=True)
    with open(OUT, "w") as f:
        f.write("\n".join(out) + "\n" + note)
    print(f"==> wrote {OUT}")


if __name__ == "__main__":
    main()

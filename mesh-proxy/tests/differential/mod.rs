//! The differential test's pieces: echo backends, one mesh.yaml covering every matcher and
//! route action we support, a seeded corpus of requests over that matcher space, a raw HTTP/1
//! client (so a request target reaches the proxy byte for byte, fragment included), and what a
//! proxy's answer is compared on.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod client;

pub use client::send;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The services of the mesh; each is a cluster with one echo backend of its own name.
pub const SERVICES: &[&str] = &[
    "api",
    "b-exact",
    "b-ci",
    "b-regex",
    "b-hdr",
    "b-hdr2",
    "b-hdr3",
    "b-hdr4",
    "b-hdr5",
    "b-hdr6",
    "b-query",
    "b-query2",
    "b-rewrite",
    "b-w1",
    "b-w2",
    "b-limited",
    "b-retry",
];

/// The routes of service `api` (domains `api`, `api:8080`, `*.api.test`, `api.example`).
const API_ROUTES: &str = r#"
      - { name: exact, match: { path: /exact }, route: { cluster: b-exact } }
      - { name: ci-exact, match: { path: /ci/Exact, case_sensitive: false }, route: { cluster: b-ci } }
      - { name: regex, match: { regex: "/items/[0-9]+" }, route: { cluster: b-regex } }
      - name: h-not-dev-in-region
        match: { prefix: /h, headers: [ { name: x-m-env, exact: dev, invert: true }, { name: x-m-region, present: true } ] }
        route: { cluster: b-hdr }
      - name: h-prefix-ignore-case
        match: { prefix: /h, headers: [ { name: x-m-env, prefix: Pro, ignore_case: true } ] }
        route: { cluster: b-hdr2 }
      - name: h-suffix-contains
        match: { prefix: /h, headers: [ { name: x-m-ver, suffix: "-beta" }, { name: x-m-user, contains: adm } ] }
        route: { cluster: b-hdr3 }
      - name: h-regex
        match: { prefix: /h, headers: [ { name: x-m-ver, regex: "v[0-9]+" } ] }
        route: { cluster: b-hdr4 }
      - name: h-absent
        match: { prefix: /h, headers: [ { name: x-m-user, present: false }, { name: x-m-region, present: true, invert: true } ] }
        route: { cluster: b-hdr5 }
      - name: h-missing-as-empty
        match: { prefix: /h, headers: [ { name: x-m-env, exact: dev, invert: true, treat_missing_header_as_empty: true } ] }
        route: { cluster: b-hdr6 }
      - name: q
        match: { prefix: /q, query_parameters: [ { name: mode, exact: fast }, { name: debug, present: true } ] }
        route: { cluster: b-query }
      - name: q-ignore-case
        match: { prefix: /q, query_parameters: [ { name: mode, prefix: Sl, ignore_case: true } ] }
        route: { cluster: b-query2 }
      - name: rewrite
        match: { prefix: /old/ }
        route:
          cluster: b-rewrite
          prefix_rewrite: /new/
          host_rewrite: rewritten.internal
          request_headers_to_add: [ { name: x-m-added, value: "1", append: false } ]
          request_headers_to_remove: [ x-m-drop ]
          response_headers_to_add: [ { name: x-m-resp, value: r, append: false } ]
      - name: weighted
        match: { prefix: /w }
        route: { weighted_clusters: [ { name: b-w1, weight: 80 }, { name: b-w2, weight: 20 } ] }
      - { name: by-header, match: { prefix: /ch }, route: { cluster_header: x-m-target } }
      - name: retried
        match: { prefix: /flaky }
        route:
          cluster: b-retry
          retry_policy: { retry_on: retriable-status-codes, retriable_status_codes: [503], num_retries: 2, backoff: { base_interval: 1ms, max_interval: 2ms } }
      - name: limited
        match: { prefix: /limited }
        route: { cluster: b-limited, rate_limit: { token_bucket: { max_tokens: 3, tokens_per_fill: 3, fill_interval: 1h } } }
      - { name: slow-short, match: { prefix: /zz-slow/short }, route: { cluster: b-exact, timeout: 200ms } }
      - { name: slow-long, match: { prefix: /zz-slow/long }, route: { cluster: b-exact, timeout: 5s } }
      - { name: ci-prefix, match: { prefix: /CI/, case_sensitive: false }, route: { cluster: b-ci } }
      - { name: fallback, match: { prefix: / }, route: { cluster: api } }
"#;

/// One node's listener ports.
pub struct NodePorts {
    pub id: &'static str,
    pub outbound: u16,
    pub inbound: u16,
    pub sdk: bool,
}

/// The mesh.yaml: every service at its backend, `api` with [`API_ROUTES`], and the nodes.
pub fn mesh_yaml(backends: &Backends, nodes: &[NodePorts]) -> String {
    let mut y = String::from("services:\n");
    for (name, addr) in &backends.addrs {
        y += &format!("  - name: {name}\n    connect_timeout: 1s\n    endpoints: [ {{ address: \"{addr}\" }} ]\n");
        if *name == "api" {
            y += "    port: 8080\n    aliases: [\"*.api.test\", api.example]\n    routes:";
            y += API_ROUTES;
        }
    }
    y += "nodes:\n";
    for n in nodes {
        y += &format!(
            "  - {{ id: {}, sdk: {}, listeners: {{ outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, local_app: 127.0.0.1:1 }} }}\n",
            n.id, n.sdk, n.outbound, n.inbound
        );
    }
    y
}

/// One request of the corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub host: String,
    /// The request target as sent (may carry a `#fragment`).
    pub target: String,
    pub headers: Vec<(String, String)>,
}

const HOSTS: &[&str] = &[
    "api",
    "api:8080",
    "api:9999",
    "API",
    "Api:8080",
    "x.api.test",
    "x.api.test:8080",
    "api.test",
    "api.example",
    "API.example",
    "api.example:80",
    "unknown",
    "b-exact",
];
const PATHS: &[&str] = &[
    "/exact",
    "/exact/",
    "/EXACT",
    "/exact#frag",
    "/exact?x=1",
    "/exact?x=1#f",
    "/ci/exact",
    "/CI/EXACT",
    "/ci/exactx",
    "/items/42",
    "/items/42x",
    "/items/",
    "/h",
    "/hello",
    "/h#x",
    "/q?mode=fast&debug",
    "/q?mode=fast",
    "/q?debug&mode=fast",
    "/q?mode=slow",
    "/q?mode=SLOW",
    "/q?mode=f%61st&debug",
    "/q?mode=fast&mode=slow&debug",
    "/q?debug=1&mode=fast",
    "/old/thing",
    "/old/",
    "/old",
    "/OLD/x",
    "/ci/x",
    "/CI/x",
    "/other",
    "/",
    "/limited",
    "/w",
    "/wide?x",
    "/ch",
];
const HEADERS: &[(&str, &[&str])] = &[
    ("x-m-env", &["dev", "prod", "PROD-1", "", "Dev"]),
    ("x-m-region", &["eu", ""]),
    ("x-m-ver", &["v12", "1-beta", "v1-beta", "v12b"]),
    ("x-m-user", &["admin", "bob", "sysadm"]),
    ("x-m-drop", &["1"]),
    ("x-m-target", &["b-exact", "nope", ""]),
];

/// `n` cases from `seed`: a host, a path and, per header of [`HEADERS`], absent half the time
/// or one of its values.
pub fn corpus(seed: u64, n: usize) -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let host = HOSTS[rng.random_range(0..HOSTS.len())].to_string();
            let target = PATHS[rng.random_range(0..PATHS.len())].to_string();
            let mut headers = Vec::new();
            for (name, values) in HEADERS {
                if rng.random_bool(0.5) {
                    let v = values[rng.random_range(0..values.len())];
                    headers.push((name.to_string(), v.to_string()));
                }
            }
            Case {
                host,
                target,
                headers,
            }
        })
        .collect()
}

/// What a proxy's answer is compared on: the status and, when a backend answered, which one
/// and what it saw (target, host, `x-m-*` headers) plus the `x-m-*` response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    /// The echo's report (`backend=`, `target=`, `host=`, `h:name=value` lines), when a
    /// backend answered; weighted backends are reported as `b-w*` (see [`weighted_pick`]).
    pub seen: Vec<String>,
    pub response_headers: Vec<String>,
}

impl Outcome {
    /// From a status, an echo body (when 200) and response headers.
    pub fn new(status: u16, body: &str, headers: &[(String, String)]) -> Self {
        let seen = if status == 200 {
            body.lines()
                .map(|l| match l {
                    "backend=b-w1" | "backend=b-w2" => "backend=b-w*".to_string(),
                    l => l.to_string(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut response_headers: Vec<String> = headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-m-"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        response_headers.sort();
        Self {
            status,
            seen,
            response_headers,
        }
    }
}

/// The weighted backend an echo body names, if any.
pub fn weighted_pick(body: &str) -> Option<&str> {
    body.lines().find_map(|l| match l {
        "backend=b-w1" => Some("b-w1"),
        "backend=b-w2" => Some("b-w2"),
        _ => None,
    })
}

/// Echo backends, one per service, on loopback; stopped on drop.
pub struct Backends {
    pub addrs: Vec<(&'static str, SocketAddr)>,
    stop: Arc<AtomicBool>,
}

impl Backends {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let addrs = SERVICES
            .iter()
            .map(|name| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    for s in l.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Ok(s) = s {
                            std::thread::spawn(move || echo(name, s));
                        }
                    }
                });
                (*name, addr)
            })
            .collect();
        Self { addrs, stop }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, a) in &self.addrs {
            let _ = TcpStream::connect_timeout(a, Duration::from_millis(200));
        }
    }
}

/// How long the echo backends take to answer targets under `/zz-slow`.
pub const SLOW_UPSTREAM: Duration = Duration::from_millis(600);

/// Requests the echo backends answered 503 (targets under `/flaky`), across all backends.
pub static FLAKY_HITS: AtomicUsize = AtomicUsize::new(0);

/// Serves one keep-alive connection: each request (bodies are not expected) is answered with
/// a report of what arrived.
fn echo(name: &str, s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split(' ').nth(1).unwrap_or_default().to_string();
        let (mut host, mut hs) = (String::new(), Vec::<(String, String)>::new());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "host" {
                host = v;
            } else if k.starts_with("x-m-") {
                match hs.iter_mut().find(|(n, _)| *n == k) {
                    Some((_, old)) => *old = format!("{old},{v}"),
                    None => hs.push((k, v)),
                }
            }
        }
        hs.sort();
        let mut body = format!("backend={name}\ntarget={target}\nhost={host}\n");
        for (k, v) in hs {
            body += &format!("h:{k}={v}\n");
        }
        if target.starts_with("/zz-slow") {
            // Slower than the short route timeout, well within the long one.
            std::thread::sleep(SLOW_UPSTREAM);
        }
        let status = if target.starts_with("/flaky") {
            FLAKY_HITS.fetch_add(1, Ordering::SeqCst);
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

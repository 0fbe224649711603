//! Tracing through two sidecars into a real OTLP/gRPC receiver (grpcio serving the
//! OpenTelemetry project's own protos, `tests/otlp_receiver.py`):
//! client → outbound sidecar (in-process, the library's options) → inbound sidecar (the
//! `mesh-sidecar` binary, `--otlp-endpoint`) → app. The spans must chain: the client's
//! `traceparent` → the outbound CLIENT span → the inbound SERVER span → the app's
//! `traceparent`, all in one trace; sampling is parent-based across the hops; a dead collector
//! costs the requests nothing.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use mesh_telemetry::TracingOptions;
use serde_json::Value;
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-sidecar");

/// The OTLP receiver process: its spans as JSON, collected by a reader thread. Killed on drop.
struct Receiver {
    child: Child,
    _stdin: ChildStdin,
    spans: Arc<Mutex<Vec<Value>>>,
    port: u16,
}

impl Receiver {
    fn start(python: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp_receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("120")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let port = first.strip_prefix("PORT ").unwrap().parse().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&spans);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Self {
            child,
            _stdin: stdin,
            spans,
            port,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The spans of trace `trace`, once there are `n` of them (bounded wait).
    fn trace(&self, trace: &str, n: usize) -> Vec<Value> {
        mesh_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(50), || {
            let of_trace: Vec<Value> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s["trace_id"] == trace)
                .cloned()
                .collect();
            (of_trace.len() >= n).then_some(of_trace)
        })
        .unwrap_or_else(|| {
            panic!(
                "not {n} spans of trace {trace}; received: {:#?}",
                self.spans.lock().unwrap()
            )
        })
    }

    fn all(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The app: answers 200 `hello` (503 on `/fail`) and remembers each request's `traceparent`.
async fn start_app() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let keep = Arc::clone(&keep);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tp = req
                        .headers()
                        .get("traceparent")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    keep.lock().unwrap().push(tp);
                    let status = if req.uri().path() == "/fail" {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    };
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"hello")));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// One listener named `name` on 127.0.0.1:`port` routing everything to `to`.
fn config(name: &str, direction: &str, port: u16, admin: u16, to: SocketAddr) -> String {
    format!(
        r#"
admin: 127.0.0.1:{admin}
drain_timeout: 2s
listeners:
  - name: {name}
    address: 127.0.0.1:{port}
    direction: {direction}
    route_config:
      name: r
      virtual_hosts: [ {{ name: all, domains: ["*"], routes: [ {{ route: {{ cluster: next }} }} ] }} ]
clusters:
  - name: next
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{to}" }} ] }} ] }}
"#
    )
}

/// The inbound sidecar as an operator runs it, exporting to `endpoint`.
fn start_binary(dir: &Path, app: SocketAddr, endpoint: &str) -> (Killed, SocketAddr) {
    let ports = mesh_testkit::free_ports(2);
    let path: PathBuf = dir.join("inbound.yaml");
    std::fs::write(&path, config("inbound", "inbound", ports[0], ports[1], app)).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["--otlp-endpoint", endpoint])
        .args(["--trace-sampling", "1"])
        .args(["--trace-service-name", "inbound-svc"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    mesh_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        std::net::TcpStream::connect(addr).ok()
    })
    .expect("the inbound sidecar did not start listening");
    (Killed(child), addr)
}

/// The outbound sidecar in-process, with the library's tracing options.
async fn start_outbound(to: SocketAddr, tracing: TracingOptions) -> (Sidecar, SocketAddr) {
    let yaml = config("outbound", "outbound", 0, 0, to);
    let mut boot = Bootstrap::from_yaml(&yaml, Path::new("outbound.yaml")).unwrap();
    boot.tracing = Some(tracing);
    let sidecar = Sidecar::start_static(boot).await.unwrap();
    let addr = sidecar.listener_addr("outbound").unwrap();
    (sidecar, addr)
}

async fn get(addr: SocketAddr, path: &str, traceparent: Option<&str>) -> StatusCode {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::get(format!("http://orders.mesh{path}"));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let mut req = req.body(Full::default()).unwrap();
    // Connect to the sidecar, name the service in the Host header.
    *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    req.headers_mut()
        .insert("host", "orders.mesh".parse().unwrap());
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

fn by_service<'a>(spans: &'a [Value], service: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["service"] == service)
        .unwrap_or_else(|| panic!("no span of {service}: {spans:#?}"))
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const FAIL_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_two_sidecars_chain_from_the_client_to_the_app() {
    let python = mesh_testkit::otlp_python_or_skip!();
    let receiver = Receiver::start(&python);
    let dir = tempfile::tempdir().unwrap();
    let (app, seen) = start_app().await;
    let (mut inbound_proc, inbound) = start_binary(dir.path(), app, &receiver.endpoint());
    // Ratio 0 at the first hop: only requests whose client sampled them are traced.
    let (outbound_sidecar, outbound) = start_outbound(
        inbound,
        TracingOptions::new(receiver.endpoint())
            .sampling_ratio(0.0)
            .service_name("outbound-svc")
            .export_delay(Duration::from_millis(100)),
    )
    .await;

    let sampled = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(
        get(outbound, "/hello", Some(&sampled)).await,
        StatusCode::OK
    );
    let unsampled_new_trace = get(outbound, "/hello", None).await;
    assert_eq!(unsampled_new_trace, StatusCode::OK);
    let failing = format!("00-{FAIL_TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(
        get(outbound, "/fail", Some(&failing)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Both sidecars flush on shutdown: in-process, and the binary on SIGTERM.
    outbound_sidecar.shutdown().await;
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(inbound_proc.0.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let exited = mesh_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        inbound_proc.0.try_wait().unwrap()
    })
    .expect("the inbound sidecar did not exit after SIGTERM");
    assert!(exited.success());

    let spans = receiver.trace(TRACE, 2);
    assert_eq!(spans.len(), 2, "one span per hop: {spans:#?}");
    let out = by_service(&spans, "outbound-svc");
    let inb = by_service(&spans, "inbound-svc");
    assert_eq!(out["kind"], 3, "the outbound hop is a CLIENT span");
    assert_eq!(inb["kind"], 2, "the inbound hop is a SERVER span");
    assert_eq!(
        out["parent_span_id"], CLIENT_SPAN,
        "child of the client's span"
    );
    assert_eq!(
        inb["parent_span_id"], out["span_id"],
        "child of the outbound span"
    );
    let app_saw = seen.lock().unwrap().clone();
    assert_eq!(
        app_saw[0],
        format!("00-{TRACE}-{}-01", inb["span_id"].as_str().unwrap()),
        "the app's parent is the inbound hop's span"
    );
    for span in [out, inb] {
        let a = &span["attributes"];
        assert_eq!(span["name"], "GET");
        assert_eq!(a["http.request.method"], "GET");
        assert_eq!(a["url.path"], "/hello");
        assert_eq!(a["url.scheme"], "http");
        assert_eq!(a["server.address"], "orders.mesh");
        assert_eq!(a["network.protocol.version"], "1.1");
        assert_eq!(a["http.response.status_code"], 200);
        assert_eq!(span["status"], 0, "unset: not an error");
    }
    assert_eq!(out["attributes"]["url.full"], "http://orders.mesh/hello");
    assert_eq!(inb["attributes"]["client.address"], "127.0.0.1");

    // The unsampled request: the first hop decided (ratio 0), the second followed although its
    // own ratio is 1; the app still got a valid traceparent saying "not sampled".
    let unsampled = &app_saw[1];
    assert!(
        unsampled.starts_with("00-") && unsampled.ends_with("-00"),
        "{unsampled}"
    );
    let unsampled_trace = &unsampled[3..35];
    assert!(
        receiver
            .all()
            .iter()
            .all(|s| s["trace_id"] != unsampled_trace),
        "no hop exported the unsampled trace"
    );

    // A 503 from the app: an error on the SERVER span (5xx) and on the CLIENT span (>= 400).
    let failed = receiver.trace(FAIL_TRACE, 2);
    for span in &failed {
        assert_eq!(span["status"], 2, "error status: {span:#?}");
        assert_eq!(span["attributes"]["http.response.status_code"], 503);
        assert_eq!(span["attributes"]["error.type"], "503");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_the_requests_nothing() {
    let (app, _) = start_app().await;
    let nobody = mesh_testkit::free_port();
    let (sidecar, outbound) = start_outbound(
        app,
        TracingOptions::new(format!("http://127.0.0.1:{nobody}"))
            .service_name("lonely")
            .export_delay(Duration::from_millis(20)),
    )
    .await;
    for _ in 0..50 {
        assert_eq!(get(outbound, "/hello", None).await, StatusCode::OK);
    }
    // Shutdown's flush fails (connection refused) and gives up; it does not hang.
    tokio::time::timeout(Duration::from_secs(20), sidecar.shutdown())
        .await
        .expect("shutdown with a dead collector did not finish");
}

#[test]
fn bad_tracing_flags_are_refused_with_the_reason() {
    let out = Command::new(BIN)
        .args(["--otlp-endpoint", "http://127.0.0.1:4317"])
        .args(["--trace-sampling", "2"])
        .args(["--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sampling_ratio 2 is not between 0.0 and 1.0"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args(["--otlp-endpoint", "not a url"])
        .args(["--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a URL"), "{stderr}");
    let out = Command::new(BIN)
        .args(["--trace-sampling", "0.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap: needs --otlp-endpoint");
}

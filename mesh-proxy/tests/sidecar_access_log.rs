//! Access logs through a real static sidecar on loopback: app → outbound → inbound → app, the
//! JSON lines read back from the log file and their fields checked, for a proxied request and
//! for the mesh's own answers (NR, RL, UF, UH), for a client that went away (DC), plus a
//! listener-level log in Envoy's text format.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::bootstrap::Bootstrap;
use mesh_proxy::sidecar::Sidecar;
use serde_json::Value;
use tokio::net::TcpListener;

const HELLO: &str = "hello from the app";

/// An app that answers [`HELLO`] after reading the request body (paths ending in `/slow`: after
/// two seconds).
async fn start_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                    if req.uri().path().ends_with("/slow") {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(HELLO))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Both listeners log JSON to `json_log` (the sidecar-wide default); a third listener, `text`,
/// logs to `text_log` in Envoy's format through its own `access_log`.
fn bootstrap(app: SocketAddr, json_log: &Path, text_log: &Path) -> (Bootstrap, [u16; 3]) {
    let ports = mesh_testkit::free_ports(4);
    let (out, inb, text, admin) = (ports[0], ports[1], ports[2], ports[3]);
    let dead = mesh_testkit::free_port();
    let (json_log, text_log) = (json_log.display(), text_log.display());
    let yaml = format!(
        r#"
admin: 127.0.0.1:{admin}
drain_timeout: 2s
access_log: [ {{ path: "{json_log}", format: json }} ]
listeners:
  - name: outbound
    address: 127.0.0.1:{out}
    direction: outbound
    route_config:
      name: outbound
      virtual_hosts:
        - name: mesh
          domains: ["*"]
          routes:
            - name: limited
              match: {{ prefix: /limited }}
              route:
                cluster: inbound_sidecar
                rate_limit: {{ token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s }} }}
            - name: dead
              match: {{ prefix: /dead }}
              route: {{ cluster: dead }}
            - name: down
              match: {{ prefix: /down }}
              route: {{ cluster: down }}
            - name: app
              match: {{ prefix: /app }}
              route: {{ cluster: inbound_sidecar }}
  - name: inbound
    address: 127.0.0.1:{inb}
    direction: inbound
    route_config:
      name: inbound
      virtual_hosts:
        - name: local
          domains: ["*"]
          routes:
            - name: to-app
              route: {{ cluster: local_app }}
  - name: text
    address: 127.0.0.1:{text}
    direction: outbound
    access_log: [ {{ path: "{text_log}" }} ]
    route_config:
      name: text
      virtual_hosts:
        - name: local
          domains: ["*"]
          routes:
            - route: {{ cluster: local_app }}
clusters:
  - name: inbound_sidecar
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "127.0.0.1:{inb}" }} ] }} ] }}
  - name: local_app
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{app}" }} ] }} ] }}
  - name: dead
    connect_timeout: 1s
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "127.0.0.1:{dead}" }} ] }} ] }}
  - name: down
    healthy_panic_threshold: 0
    load_assignment: {{ endpoints: [ {{ endpoints: [ {{ address: "{app}", health: unhealthy }} ] }} ] }}
"#
    );
    (
        Bootstrap::from_yaml(&yaml, Path::new("test.yaml")).unwrap(),
        [out, inb, text],
    )
}

/// Sends `method path` with `body` and a known request id; returns the status and body.
async fn send(port: u16, method: &str, path: &str, body: &'static str, rid: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", "hello.mesh")
        .header("user-agent", "access-log-test")
        .header("x-request-id", rid)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The JSON lines of `log` that carry request id `rid`, once there are `want` of them (bounded
/// wait: lines are written when each response has ended).
async fn lines_for(log: &Path, rid: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .filter(|v| v["request_id"] == rid)
            .collect();
        if lines.len() >= want || Instant::now() > deadline {
            assert_eq!(lines.len(), want, "lines for {rid}:\n{text}");
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_logs_a_json_line_with_envoys_fields_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (json_log, text_log) = (dir.path().join("access.json"), dir.path().join("text.log"));
    let app = start_app().await;
    let (boot, [out, inb, _]) = bootstrap(app, &json_log, &text_log);
    let sidecar = Sidecar::start_static(boot).await.unwrap();

    // Proxied: one line per hop, both with the request's id.
    let (status, body) = send(out, "POST", "/app/items?x=1", "ping!", "rid-ok").await;
    assert_eq!((status, body.as_str()), (200, HELLO));
    let lines = lines_for(&json_log, "rid-ok", 2).await;
    let hop = |upstream: &str| {
        lines
            .iter()
            .find(|l| l["upstream_cluster"] == upstream)
            .unwrap_or_else(|| panic!("no line for {upstream}: {lines:?}"))
    };
    let (outbound, inbound) = (hop("inbound_sidecar"), hop("local_app"));
    for line in [outbound, inbound] {
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], "/app/items?x=1");
        assert_eq!(line["protocol"], "HTTP/1.1");
        assert_eq!(line["authority"], "hello.mesh");
        assert_eq!(line["user_agent"], "access-log-test");
        assert_eq!(line["response_code"], 200);
        assert_eq!(line["response_flags"], "-");
        assert_eq!(line["bytes_received"], 5);
        assert_eq!(line["bytes_sent"], HELLO.len());
        assert!(line["duration"].as_u64().unwrap() < 10_000, "{line}");
        assert!(
            line["start_time"].as_str().unwrap().ends_with('Z'),
            "{line}"
        );
    }
    assert_eq!(outbound["route_name"], "app");
    assert_eq!(outbound["upstream_host"], format!("127.0.0.1:{inb}"));
    assert_eq!(outbound["x_forwarded_for"], "127.0.0.1");
    let client = outbound["downstream_remote_address"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "{outbound}");
    assert_eq!(inbound["route_name"], "to-app");
    assert_eq!(inbound["upstream_host"], app.to_string());
    assert_eq!(inbound["x_forwarded_for"], "127.0.0.1, 127.0.0.1");

    // No route: NR, 404, nothing upstream.
    assert_eq!(send(out, "GET", "/nowhere", "", "rid-nr").await.0, 404);
    let nr = &lines_for(&json_log, "rid-nr", 1).await[0];
    assert_eq!(
        (&nr["response_code"], &nr["response_flags"]),
        (&Value::from(404), &Value::from("NR"))
    );
    assert_eq!(nr["upstream_host"], Value::Null);
    assert!(
        nr["bytes_sent"].as_u64().unwrap() > 0,
        "the local reply's body: {nr}"
    );

    // Rate limited: the bucket holds one token, the second call is refused (RL, 429).
    assert_eq!(send(out, "GET", "/limited", "", "rid-rl-1").await.0, 200);
    assert_eq!(send(out, "GET", "/limited", "", "rid-rl-2").await.0, 429);
    let rl = &lines_for(&json_log, "rid-rl-2", 1).await[0];
    assert_eq!(
        (&rl["response_code"], &rl["response_flags"]),
        (&Value::from(429), &Value::from("RL"))
    );
    let passed = &lines_for(&json_log, "rid-rl-1", 2).await;
    assert!(passed.iter().all(|l| l["response_flags"] == "-"));

    // Nothing listens on the dead cluster's endpoint: UF, 502, the endpoint tried.
    assert_eq!(send(out, "GET", "/dead", "", "rid-uf").await.0, 502);
    let uf = &lines_for(&json_log, "rid-uf", 1).await[0];
    assert_eq!(
        (&uf["response_code"], &uf["response_flags"]),
        (&Value::from(502), &Value::from("UF"))
    );
    assert_eq!(uf["upstream_cluster"], "dead");
    assert!(
        uf["upstream_host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{uf}"
    );

    // Every endpoint of `down` is unhealthy: UH, 503.
    assert_eq!(send(out, "GET", "/down", "", "rid-uh").await.0, 503);
    let uh = &lines_for(&json_log, "rid-uh", 1).await[0];
    assert_eq!(
        (&uh["response_code"], &uh["response_flags"]),
        (&Value::from(503), &Value::from("UH"))
    );
    assert_eq!(uh["upstream_cluster"], "down");

    let (status, metrics) =
        mesh_testkit::http_get(sidecar.admin_addr(), "/stats/prometheus").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("mesh_access_log_dropped_total 0"),
        "{metrics}"
    );
    sidecar.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listeners_own_log_writes_envoys_default_text_format() {
    let dir = tempfile::tempdir().unwrap();
    let (json_log, text_log) = (dir.path().join("access.json"), dir.path().join("text.log"));
    let app = start_app().await;
    let (boot, [_, _, text]) = bootstrap(app, &json_log, &text_log);
    let sidecar = Sidecar::start_static(boot).await.unwrap();
    assert_eq!(send(text, "GET", "/t", "", "rid-text").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = std::fs::read_to_string(&text_log).unwrap_or_default();
        if let Some(l) = log.lines().next() {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line in {}",
            text_log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // [START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS RX TX DURATION UPSTREAM-SERVICE-TIME
    // "XFF" "UA" "REQUEST-ID" "AUTHORITY" "UPSTREAM_HOST"
    let (time, rest) = line.split_once("] ").unwrap();
    assert!(time.starts_with('[') && time.ends_with('Z'), "{line}");
    let want_head = format!("\"GET /t HTTP/1.1\" 200 - 0 {} ", HELLO.len());
    assert!(rest.starts_with(&want_head), "{line}");
    let want_tail =
        format!(" - \"127.0.0.1\" \"access-log-test\" \"rid-text\" \"hello.mesh\" \"{app}\"");
    assert!(rest.ends_with(&want_tail), "{line}");
    sidecar.shutdown().await;
    let json = std::fs::read_to_string(&json_log).unwrap_or_default();
    assert!(
        !json.contains("rid-text"),
        "the listener's own log replaces the default: {json}"
    );
}

/// A client that hangs up before the response: Envoy's response code 0 and flag `DC`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_logged_with_dc() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (json_log, text_log) = (dir.path().join("access.json"), dir.path().join("text.log"));
    let app = start_app().await;
    let (boot, [out, _, _]) = bootstrap(app, &json_log, &text_log);
    let sidecar = Sidecar::start_static(boot).await.unwrap();
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", out))
        .await
        .unwrap();
    conn.write_all(b"GET /app/slow HTTP/1.1\r\nhost: hello.mesh\r\nx-request-id: rid-dc\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(conn);
    let lines = lines_for(&json_log, "rid-dc", 2).await;
    let outbound = lines
        .iter()
        .find(|l| l["upstream_cluster"] == "inbound_sidecar")
        .unwrap();
    assert_eq!(
        (&outbound["response_code"], &outbound["response_flags"]),
        (&Value::from(0), &Value::from("DC")),
        "{outbound}"
    );
    assert_eq!(outbound["path"], "/app/slow");
    sidecar.shutdown().await;
}

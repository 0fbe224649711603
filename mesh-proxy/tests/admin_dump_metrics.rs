//! What the admin endpoints show of a live mesh: two dynamic sidecars (one SotW, one delta) fed by
//! our control plane. `/config_dump` lists every resource type with per-resource versions and
//! filters by `?resource=` and `?name_regex=` (on the sidecar, and per node on the control plane);
//! after real traffic, both admin endpoints' `/metrics` pass `promtool check metrics`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_proxy::sidecar::{DynamicOptions, Sidecar};
use mesh_xds::client::AdsMode;
use mesh_xds::server::{mesh_core_validator, Metrics, SnapshotCache, XdsServer};
use mesh_xds::source::FileSource;
use serde_json::Value;

const LDS: &str = "ListenersConfigDump";
const RDS: &str = "RoutesConfigDump";
const CDS: &str = "ClustersConfigDump";
const EDS: &str = "EndpointsConfigDump";

/// The control plane (with its admin endpoint), the app and two ready sidecars.
struct Mesh {
    hello: Sidecar,
    client: Sidecar,
    /// The client's outbound listener.
    out: SocketAddr,
    cp_admin: SocketAddr,
    /// The xDS server's address.
    xds: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _app: mesh_testkit::HttpStub,
    _dir: tempfile::TempDir,
}

impl Mesh {
    async fn start() -> Self {
        let app = mesh_testkit::HttpStub::start(200, "hello from app\n").unwrap();
        let p = mesh_testkit::free_ports(6);
        let yaml = format!(
            r#"
services:
  - name: hello
    endpoints:
      - address: 127.0.0.1:{hello_in}
nodes:
  - id: hello-1
    service: hello
    listeners: {{ outbound: 127.0.0.1:{unused}, inbound: 127.0.0.1:{hello_in}, local_app: {app} }}
  - id: client-1
    listeners: {{ outbound: 127.0.0.1:{client_out}, inbound: 127.0.0.1:{client_in}, local_app: 127.0.0.1:1 }}
  - id: envoy-1
    listeners: {{ outbound: 127.0.0.1:{envoy_out}, inbound: 127.0.0.1:{envoy_in}, local_app: 127.0.0.1:1 }}
"#,
            envoy_out = p[4],
            envoy_in = p[5],
            hello_in = p[0],
            unused = p[1],
            client_out = p[2],
            client_in = p[3],
            app = app.addr(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, yaml).unwrap();
        let cache = SnapshotCache::new();
        cache.set_validator(mesh_core_validator());
        let source = FileSource::new(&path, cache.clone())
            .spawn(Duration::from_millis(100))
            .unwrap();
        let metrics = std::sync::Arc::new(Metrics::new());
        let (xds_addr, server) = XdsServer::new(cache.clone())
            .with_callbacks(metrics.clone())
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let admin_socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cp_admin = admin_socket.local_addr().unwrap();
        let admin = tokio::spawn(mesh_xds::server::admin::serve(admin_socket, cache, metrics));

        let start = |node: &str, mode: AdsMode| {
            let mut o = DynamicOptions::new(vec![format!("http://{xds_addr}")], node);
            o.admin = "127.0.0.1:0".parse().unwrap();
            o.mode = mode;
            o.drain_timeout = Duration::from_secs(1);
            Sidecar::start_dynamic(o)
        };
        let hello = start("hello-1", AdsMode::Sotw).await.unwrap();
        let client = start("client-1", AdsMode::Delta).await.unwrap();
        for s in [&hello, &client] {
            s.xds()
                .unwrap()
                .wait_ready(Duration::from_secs(15))
                .await
                .unwrap();
        }
        let out = SocketAddr::from(([127, 0, 0, 1], p[2]));
        Self {
            hello,
            client,
            out,
            cp_admin,
            xds: xds_addr,
            tasks: vec![source, server, admin],
            _app: app,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.hello.shutdown().await;
        self.client.shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || mesh_testkit::http_get(addr, &path).unwrap())
        .await
        .unwrap()
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The section of `dump` whose `@type` ends with `section`.
fn section<'a>(dump: &'a Value, section: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"].as_str().unwrap().ends_with(section))
        .unwrap_or_else(|| panic!("no {section} in {dump}"))
}

fn list<'a>(v: &'a Value, field: &str) -> &'a Vec<Value> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

/// Every entry of `entries` has a non-empty version and an RFC 3339 `last_updated`.
fn assert_versioned(entries: &[Value], what: &str) {
    assert!(!entries.is_empty(), "{what}: none");
    for e in entries {
        let state = e.get("active_state").unwrap_or(e);
        let version = state["version_info"].as_str().unwrap_or_default();
        assert!(!version.is_empty(), "{what}: no version in {e}");
        let at = state["last_updated"].as_str().unwrap_or_default();
        assert!(
            at.len() == "2024-01-01T00:00:00.000Z".len() && at.ends_with('Z'),
            "{what}: last_updated {at:?} in {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_lists_every_type_with_versions_and_filters() {
    let mesh = Mesh::start().await;
    let cp = get_json(mesh.cp_admin, "/snapshots").await;

    for (sidecar, node) in [(&mesh.hello, "hello-1"), (&mesh.client, "client-1")] {
        let admin = sidecar.admin_addr();
        let dump = get_json(admin, "/config_dump").await;
        let listeners = list(section(&dump, LDS), "dynamic_listeners");
        assert_versioned(listeners, node);
        let names: Vec<&str> = listeners
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"outbound"), "{node}: {names:?}");
        assert_eq!(
            listeners[0]["active_state"]["listener"]["name"], listeners[0]["name"],
            "the body is the listener"
        );
        assert_versioned(list(section(&dump, RDS), "dynamic_route_configs"), node);
        assert_versioned(list(section(&dump, CDS), "dynamic_active_clusters"), node);
        assert_versioned(list(section(&dump, EDS), "dynamic_endpoint_configs"), node);
        assert!(
            section(&dump, CDS)["version_info"].is_string(),
            "{node}: the CDS version: {dump}"
        );
        let hello_eds = list(section(&dump, EDS), "dynamic_endpoint_configs")
            .iter()
            .find(|e| e["endpoint_config"]["cluster_name"] == "hello");
        assert!(hello_eds.is_some(), "{node}: hello's endpoints: {dump}");

        // The versions are the control plane's: SotW, the type's version; delta, the
        // resource's own.
        let cp_node = cp["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .unwrap();
        let cp_clusters = cp_node["set"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "cluster")
            .unwrap();
        let cluster = &list(section(&dump, CDS), "dynamic_active_clusters")[0];
        let name = cluster["cluster"]["name"].as_str().unwrap();
        let expected = if node == "hello-1" {
            cp_clusters["version"].clone()
        } else {
            cp_clusters["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r[0] == name)
                .unwrap()[1]
                .clone()
        };
        assert_eq!(cluster["version_info"], expected, "{node}: {cp_clusters}");

        // ?resource= returns just that field's entries, tagged with their type.
        let only = get_json(admin, "/config_dump?resource=dynamic_listeners").await;
        let entries = list(&only, "configs");
        assert_eq!(entries.len(), listeners.len());
        for e in entries {
            assert_eq!(
                e["@type"],
                "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener"
            );
            assert!(e["active_state"]["version_info"].is_string(), "{e}");
        }
        let only = get_json(admin, "/config_dump?resource=dynamic_endpoint_configs").await;
        assert!(list(&only, "configs")
            .iter()
            .all(|e| e["endpoint_config"].is_object()));
        // ?name_regex= keeps the resources whose name matches.
        let named = get_json(admin, "/config_dump?name_regex=%5Eoutbound%24").await;
        let kept = list(section(&named, LDS), "dynamic_listeners");
        assert_eq!(kept.len(), 1, "{named}");
        assert_eq!(kept[0]["name"], "outbound");
        let (status, body) = get(admin, "/config_dump?resource=dynamic_nothing").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("dynamic_active_clusters"), "{body}");
    }

    // The control plane: the same shape per node, with the snapshot's versions.
    let dump = get_json(mesh.cp_admin, "/config_dump?node=client-1").await;
    assert_versioned(list(section(&dump, LDS), "dynamic_listeners"), "cp");
    assert_versioned(list(section(&dump, RDS), "dynamic_route_configs"), "cp");
    assert_versioned(list(section(&dump, CDS), "dynamic_active_clusters"), "cp");
    assert_versioned(list(section(&dump, EDS), "dynamic_endpoint_configs"), "cp");
    let sidecar = get_json(mesh.client.admin_addr(), "/config_dump").await;
    let names = |d: &Value| -> Vec<String> {
        list(section(d, CDS), "dynamic_active_clusters")
            .iter()
            .map(|c| c["cluster"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&dump),
        names(&sidecar),
        "what is set is what the node holds"
    );
    let only = get_json(
        mesh.cp_admin,
        "/config_dump?node=client-1&resource=dynamic_active_clusters",
    )
    .await;
    assert_eq!(list(&only, "configs").len(), names(&dump).len());
    let (status, body) = get(mesh.cp_admin, "/config_dump").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("client-1") && body.contains("hello-1"),
        "{body}"
    );
    let (status, _) = get(mesh.cp_admin, "/config_dump?node=client-1&name_regex=(").await;
    assert_eq!(status, 400);

    // The static sidecar's dump has the static_* entries (tests/sidecar_static.rs); the xDS
    // status moved to /xds.
    let xds = get_json(mesh.client.admin_addr(), "/xds").await;
    assert!(xds["connection"]["connected"].is_string(), "{xds}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_admin_metrics_pass_promtool_after_real_traffic() {
    let Some(promtool) = mesh_testkit::require_promtool() else {
        return;
    };
    let mesh = Mesh::start().await;
    let out = mesh.out;
    let statuses = tokio::task::spawn_blocking(move || {
        let call = |host: &str| {
            mesh_testkit::http_request(out, "GET", "/", &[("Host", host)], b"")
                .map(|r| r.status)
                .unwrap_or(0)
        };
        // The outbound listener binds a moment after /ready; retry briefly.
        mesh_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
            (call("hello") == 200).then_some(())
        });
        (0..20)
            .map(|i| call(if i % 4 == 0 { "nowhere" } else { "hello" }))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        15,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 404).count(),
        5,
        "{statuses:?}"
    );

    let endpoints = [
        ("client sidecar", mesh.client.admin_addr()),
        ("hello sidecar", mesh.hello.admin_addr()),
        ("control plane", mesh.cp_admin),
    ];
    for (what, admin) in endpoints {
        let (status, text) = get(admin, "/metrics").await;
        assert_eq!(status, 200, "{what}: {text}");
        if let Err(problems) = mesh_testkit::promtool_check_metrics(&promtool, &text) {
            panic!("{what}: {problems}\n--- exposition ---\n{text}");
        }
    }
    // The samples are there: the traffic's counters and histograms, and the xDS exchange.
    let (_, client) = get(mesh.client.admin_addr(), "/metrics").await;
    // (The warm-up's requests count too: at least 15 and 20.)
    let sample = |prefix: &str| -> f64 {
        client
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {prefix}:\n{client}"))
    };
    assert!(sample("mesh_requests_total{listener=\"outbound\",route=\"hello\",cluster=\"hello\",status_class=\"2xx\"}") >= 15.0);
    assert!(sample("mesh_request_duration_seconds_count{listener=\"outbound\"}") >= 20.0);
    for needle in [
        "# TYPE mesh_requests_total counter",
        "mesh_local_replies_total{listener=\"outbound\",code=\"no_route\"} 5",
        "# TYPE mesh_request_duration_seconds histogram",
        "# TYPE mesh_upstream_requests_overflow_total counter",
        "# TYPE mesh_xds_version_info gauge",
    ] {
        assert!(
            client.contains(needle),
            "client sidecar lacks {needle:?}:\n{client}"
        );
    }
    let (_, cp) = get(mesh.cp_admin, "/metrics").await;
    for needle in [
        "# TYPE xds_acks_total counter",
        "# TYPE xds_convergence_seconds histogram",
        "xds_streams_open 2",
    ] {
        assert!(cp.contains(needle), "control plane lacks {needle:?}:\n{cp}");
    }
    mesh.stop().await;
}

/// The keys of the first entry of `field` in the section `section` of `dump` (and of its
/// `active_state`, for listeners).
fn entry_keys(dump: &Value, section: &str, field: &str) -> Vec<String> {
    let sec = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["@type"]
                .as_str()
                .unwrap()
                .ends_with(&format!(".{section}"))
        })
        .unwrap_or_else(|| panic!("no {section} in {dump}"));
    let first = &list(sec, field)[0];
    let mut keys: Vec<String> = first.as_object().unwrap().keys().cloned().collect();
    if let Some(state) = first.get("active_state").and_then(Value::as_object) {
        keys.extend(state.keys().map(|k| format!("active_state.{k}")));
    }
    keys.sort();
    keys
}

/// Real Envoy, fed by the same control plane, is the oracle of the dump's shape: the same
/// section types, field names, entry keys and `?resource=` entry types (bodies differ: ours are
/// mesh-core's model). Envoy does not fill `version_info`/`last_updated` of endpoint sets
/// (`not-implemented-hide` in its API); ours has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shape_matches_real_envoys() {
    let Some(_) = mesh_testkit::require_envoy() else {
        return;
    };
    let mesh = Mesh::start().await;
    let envoy = mesh_testkit::EnvoyProcess::start(&mesh_testkit::ads_bootstrap(
        "envoy-1", mesh.xds, "GRPC",
    ))
    .unwrap();
    let envoy_admin = envoy.admin_addr();
    let theirs = tokio::task::spawn_blocking(move || {
        mesh_testkit::wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
            let (_, body) = mesh_testkit::http_get(envoy_admin, "/config_dump?include_eds").ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            let eds = v["configs"]
                .as_array()?
                .iter()
                .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(EDS)))?;
            eds.get("dynamic_endpoint_configs").is_some().then_some(v)
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("Envoy never got its config:\n{}", envoy.logs()));
    let ours = get_json(mesh.client.admin_addr(), "/config_dump").await;

    for (sec, field) in [
        (LDS, "dynamic_listeners"),
        (RDS, "dynamic_route_configs"),
        (CDS, "dynamic_active_clusters"),
        (EDS, "dynamic_endpoint_configs"),
    ] {
        let (o, t) = (
            entry_keys(&ours, sec, field),
            entry_keys(&theirs, sec, field),
        );
        let extra: Vec<&String> = o.iter().filter(|k| !t.contains(k)).collect();
        let missing: Vec<&String> = t.iter().filter(|k| !o.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "{field}: Envoy has {missing:?} we lack (ours {o:?})"
        );
        let allowed = sec == EDS
            && extra
                .iter()
                .all(|k| *k == "version_info" || *k == "last_updated");
        assert!(
            extra.is_empty() || allowed,
            "{field}: we have {extra:?} Envoy lacks (its {t:?})"
        );
        if sec == LDS || sec == CDS {
            assert!(section(&theirs, sec)["version_info"].is_string());
            assert!(section(&ours, sec)["version_info"].is_string());
        }
        // ?resource= tags each entry with the same type as Envoy does.
        let path = format!("/config_dump?resource={field}&include_eds");
        let p2 = path.clone();
        let (_, body) =
            tokio::task::spawn_blocking(move || mesh_testkit::http_get(envoy_admin, &p2).unwrap())
                .await
                .unwrap();
        let theirs_only: Value = serde_json::from_str(&body).unwrap();
        let ours_only = get_json(mesh.client.admin_addr(), &path).await;
        assert_eq!(
            list(&ours_only, "configs")[0]["@type"],
            list(&theirs_only, "configs")[0]["@type"],
            "{field}"
        );
    }
    let (theirs_status, body) = tokio::task::spawn_blocking(move || {
        mesh_testkit::http_get(envoy_admin, "/config_dump?resource=dynamic_nothing").unwrap()
    })
    .await
    .unwrap();
    let (ours_status, _) = get(
        mesh.client.admin_addr(),
        "/config_dump?resource=dynamic_nothing",
    )
    .await;
    assert_eq!(
        ours_status, theirs_status,
        "an unknown resource, as Envoy answers: {body}"
    );
    drop(envoy);
    mesh.stop().await;
}

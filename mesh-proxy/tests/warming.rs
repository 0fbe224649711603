//! Listener and cluster warming of a dynamic sidecar, against a scripted ADS server that sends
//! its resources in an order of its choosing (LDS first, the rest a second later, as some
//! control planes do), with load running through every gap and each request's outcome counted:
//! no request may see a 404 or a 503 from the gap.
#![allow(clippy::unwrap_used)]

mod scripted_ads;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_core::{Cluster, ClusterLoadAssignment, Discovery, Listener, RouteConfiguration};
use scripted_ads::{Setup, WAIT};

/// The gap between LDS and the rest.
const GAP: Duration = Duration::from_secs(1);

// ---- resources -----------------------------------------------------------------------------

fn listener(port: u16, table: &str) -> Listener {
    mesh_core::yaml::from_str(&format!(
        "{{ name: out, address: '127.0.0.1:{port}', direction: outbound, route_config_name: {table} }}"
    ))
    .unwrap()
}

fn table(name: &str, cluster: &str) -> RouteConfiguration {
    mesh_core::yaml::from_str(&format!(
        "{{ name: {name}, virtual_hosts: [ {{ name: v, domains: ['*'], routes: [ {{ match: {{ prefix: '/' }}, route: {{ cluster: {cluster} }} }} ] }} ] }}"
    ))
    .unwrap()
}

fn eds_cluster(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.discovery = Discovery::Eds;
    c
}

fn static_cluster(name: &str, to: SocketAddr) -> Cluster {
    let mut c = Cluster::new(name);
    c.load_assignment = Some(ClusterLoadAssignment::from_addrs(name, [to]));
    c
}

fn endpoints(name: &str, to: SocketAddr) -> ClusterLoadAssignment {
    ClusterLoadAssignment::from_addrs(name, [to])
}

// ---- load ----------------------------------------------------------------------------------

/// Every request's outcome.
#[derive(Debug, Default)]
struct Outcomes {
    /// Connection refused before the listener first answered (it was warming).
    refused_before_live: u64,
    /// Connection refused after it had answered once.
    refused_after_live: u64,
    /// 200s by body.
    ok: BTreeMap<String, u64>,
    /// Anything else: a status other than 200 or a broken exchange.
    bad: Vec<String>,
}

/// Two client threads calling `addr` in a loop until stopped (or 30 s).
struct Load {
    outcomes: Arc<Mutex<Outcomes>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let (outcomes, stop) = (Arc::clone(&outcomes), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(30)
                    {
                        let r =
                            mesh_testkit::http_request(addr, "GET", "/", &[("Host", "hello")], b"");
                        let mut o = outcomes.lock().unwrap();
                        let live = !o.ok.is_empty();
                        match r {
                            Ok(r) if r.status == 200 => *o.ok.entry(r.text()).or_default() += 1,
                            Ok(r) => o.bad.push(format!("{} {}", r.status, r.text())),
                            Err(e) if format!("{e:#}").contains("connect to") => {
                                if live {
                                    o.refused_after_live += 1;
                                } else {
                                    o.refused_before_live += 1;
                                }
                                drop(o);
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            Err(e) => o.bad.push(format!("{e:#}")),
                        }
                    }
                })
            })
            .collect();
        Self {
            outcomes,
            stop,
            threads,
        }
    }

    /// Waits until a 200 with `body` was counted.
    async fn wait_for_body(&self, body: &str) {
        let started = Instant::now();
        while self
            .outcomes
            .lock()
            .unwrap()
            .ok
            .get(body)
            .is_none_or(|n| *n == 0)
        {
            assert!(
                started.elapsed() < WAIT,
                "no 200 {body:?} in time: {:?}",
                self.outcomes
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn snapshot(&self) -> (u64, u64) {
        let o = self.outcomes.lock().unwrap();
        (o.ok.values().sum(), o.bad.len() as u64)
    }

    fn stop(self) -> Outcomes {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.outcomes)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---- the tests -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lds_first_and_the_rest_a_second_later_shows_no_request_a_404_or_503() {
    let app = mesh_testkit::HttpStub::start(200, "one").unwrap();
    let mut s = Setup::start(Some(Duration::from_secs(15))).await;
    let port = mesh_testkit::free_port();
    let load = Load::start(local(port));

    s.ads.send(&[listener(port, "r")]);
    s.ads.subscribed::<RouteConfiguration>("r").await;
    let (code, ready) = s.admin("/ready").await;
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready.contains("warming listener \"out\": waiting for route table"),
        "{ready}"
    );
    let (_, stats) = s.admin("/stats/prometheus").await;
    assert!(stats.contains("mesh_warming_listeners 1"), "{stats}");

    tokio::time::sleep(GAP).await;
    s.ads.send(&[table("r", "c")]);
    s.ads.send(&[eds_cluster("c")]);
    s.ads.subscribed::<ClusterLoadAssignment>("c").await;
    // Table and cluster are in; the cluster's endpoints are not: still warming.
    let (code, ready) = s.admin("/ready").await;
    assert_eq!(code, 503, "{ready}");
    assert!(ready.contains("waiting for clusters [\"c\"]"), "{ready}");
    assert!(
        ready.contains("warming cluster \"c\": waiting for endpoints"),
        "{ready}"
    );
    // The config dump shows both as Envoy does: `warming_state`, `dynamic_warming_clusters`.
    let (_, dump) = s.admin("/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let section = |t: &str| {
        dump["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["@type"].as_str().unwrap().ends_with(t))
            .unwrap()
            .clone()
    };
    let listener = &section("ListenersConfigDump")["dynamic_listeners"][0];
    assert_eq!(listener["name"], "out", "{dump}");
    assert!(listener["warming_state"]["listener"].is_object(), "{dump}");
    assert!(listener.get("active_state").is_none(), "{dump}");
    let clusters = section("ClustersConfigDump");
    assert_eq!(
        clusters["dynamic_warming_clusters"][0]["cluster"]["name"], "c",
        "{dump}"
    );
    assert!(clusters.get("dynamic_active_clusters").is_none(), "{dump}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(load.snapshot(), (0, 0), "nothing answered while warming");

    s.ads.send(&[endpoints("c", app.addr())]);
    load.wait_for_body("one").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = load.stop();
    eprintln!("outcomes: {o:?}");
    assert!(o.bad.is_empty(), "requests failed: {:?}", o.bad);
    assert!(
        o.refused_before_live > 0,
        "the load ran through the gap: {o:?}"
    );
    assert_eq!(o.refused_after_live, 0, "{o:?}");
    assert!(o.ok["one"] > 0);
    let (code, ready) = s.admin("/ready").await;
    // LIVE, then the plaintext notice (nothing here has TLS).
    assert_eq!(code, 200, "{ready}");
    assert!(ready.starts_with("LIVE\n"), "{ready}");
    let (_, stats) = s.admin("/stats/prometheus").await;
    assert!(stats.contains("mesh_warming_listeners 0"), "{stats}");
    let (_, dump) = s.admin("/config_dump?resource=dynamic_listeners").await;
    assert!(
        dump.contains("active_state") && !dump.contains("warming_state"),
        "{dump}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_listener_serves_its_old_config_while_the_new_one_warms() {
    let (one, two) = (
        mesh_testkit::HttpStub::start(200, "one").unwrap(),
        mesh_testkit::HttpStub::start(200, "two").unwrap(),
    );
    let mut s = Setup::start(Some(Duration::from_secs(15))).await;
    let port = mesh_testkit::free_port();
    s.ads.send(&[static_cluster("c", one.addr())]);
    s.ads.send(&[listener(port, "r1")]);
    s.ads.subscribed::<RouteConfiguration>("r1").await;
    s.ads.send(&[table("r1", "c")]);
    let load = Load::start(local(port));
    load.wait_for_body("one").await;

    // The listener now wants table r2, which sends to a new EDS cluster: all three arrive a
    // second later, the endpoints last.
    s.ads.send(&[listener(port, "r2")]);
    s.ads.subscribed::<RouteConfiguration>("r2").await;
    let (_, ready) = s.admin("/ready").await;
    assert!(ready.contains("warming listener \"out\""), "{ready}");
    tokio::time::sleep(GAP).await;
    s.ads.send(&[table("r2", "c2")]);
    s.ads
        .send(&[static_cluster("c", one.addr()), eds_cluster("c2")]);
    s.ads.subscribed::<ClusterLoadAssignment>("c2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !load.outcomes.lock().unwrap().ok.contains_key("two"),
        "the new config is not live before its cluster's endpoints"
    );
    s.ads.send(&[endpoints("c2", two.addr())]);
    load.wait_for_body("two").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let o = load.stop();
    eprintln!("outcomes: {o:?}");
    assert!(o.bad.is_empty(), "requests failed: {:?}", o.bad);
    assert_eq!(o.refused_after_live, 0, "the socket stayed: {o:?}");
    assert!(
        o.ok["one"] > 10,
        "the old config served through the gap: {o:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_cluster_keeps_its_old_endpoints_until_its_eds_arrives() {
    let (one, two) = (
        mesh_testkit::HttpStub::start(200, "one").unwrap(),
        mesh_testkit::HttpStub::start(200, "two").unwrap(),
    );
    let mut s = Setup::start(Some(Duration::from_secs(15))).await;
    let port = mesh_testkit::free_port();
    s.ads.send(&[static_cluster("c", one.addr())]);
    s.ads.send(&[listener(port, "r")]);
    s.ads.subscribed::<RouteConfiguration>("r").await;
    s.ads.send(&[table("r", "c")]);
    let load = Load::start(local(port));
    load.wait_for_body("one").await;

    // `c` turns into an EDS cluster; its endpoints come a second later.
    s.ads.send(&[eds_cluster("c")]);
    s.ads.subscribed::<ClusterLoadAssignment>("c").await;
    let (_, ready) = s.admin("/ready").await;
    assert!(ready.contains("warming cluster \"c\""), "{ready}");
    tokio::time::sleep(GAP).await;
    s.ads.send(&[endpoints("c", two.addr())]);
    load.wait_for_body("two").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let o = load.stop();
    eprintln!("outcomes: {o:?}");
    assert!(o.bad.is_empty(), "requests failed: {:?}", o.bad);
    assert!(
        o.ok["one"] > 10,
        "the old endpoints served through the gap: {o:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_table_never_comes_goes_live_at_the_initial_fetch_timeout() {
    let timeout = Duration::from_millis(800);
    let mut s = Setup::start(Some(timeout)).await;
    let port = mesh_testkit::free_port();
    s.ads.send(&[listener(port, "never")]);
    let sent = Instant::now();
    s.ads.subscribed::<RouteConfiguration>("never").await;
    assert!(
        std::net::TcpStream::connect(local(port)).is_err(),
        "warming"
    );
    let (_, ready) = s.admin("/ready").await;
    assert!(ready.contains("warming listener \"out\""), "{ready}");

    let answered = tokio::task::spawn_blocking(move || {
        mesh_testkit::wait_for(WAIT, Duration::from_millis(20), || {
            mesh_testkit::http_request(local(port), "GET", "/", &[("Host", "hello")], b"").ok()
        })
    })
    .await
    .unwrap()
    .expect("the listener went live");
    let waited = sent.elapsed();
    assert!(
        waited >= timeout - Duration::from_millis(100),
        "live after {waited:?}"
    );
    assert_eq!(answered.status, 404, "live with an empty table, as Envoy");
    let (_, ready) = s.admin("/ready").await;
    assert!(!ready.contains("warming listener"), "{ready}");
    s.stop().await;
}

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_core::{Cluster, Discovery, Listener, RouteConfiguration};
use tokio::time::Instant;

use super::{WarmingGate, DEFAULT_INITIAL_FETCH_TIMEOUT};

fn listener(name: &str, port: u16, table: &str) -> Listener {
    mesh_core::yaml::from_str(&format!(
        "{{ name: {name}, address: '127.0.0.1:{port}', direction: outbound, route_config_name: {table} }}"
    ))
    .unwrap()
}

fn table(name: &str, cluster: &str) -> RouteConfiguration {
    mesh_core::yaml::from_str(&format!(
        "{{ name: {name}, virtual_hosts: [ {{ name: v, domains: ['*'], routes: [ {{ match: {{ prefix: '/' }}, route: {{ cluster: {cluster} }} }} ] }} ] }}"
    ))
    .unwrap()
}

fn eds(name: &str, service: Option<&str>) -> Cluster {
    let mut c = Cluster::new(name);
    c.discovery = Discovery::Eds;
    c.eds_service_name = service.map(str::to_owned);
    c
}

fn names<T>(v: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    v.iter().map(|x| name(x).to_owned()).collect()
}

/// Plans clusters then listeners and records both as applied, as the warmer does.
fn step(g: &mut WarmingGate, now: Instant) -> (Vec<Cluster>, Vec<Listener>) {
    let c = g.plan_clusters(now);
    g.clusters_applied(&c);
    let l = g.plan_listeners(now);
    g.listeners_applied(&l);
    (c, l)
}

#[test]
fn a_new_listener_waits_for_its_table_its_clusters_and_their_endpoints() {
    let t0 = Instant::now();
    let mut g = WarmingGate::new(Some(DEFAULT_INITIAL_FETCH_TIMEOUT));
    g.set_listeners(vec![listener("out", 1, "r")], t0);
    assert!(step(&mut g, t0).1.is_empty(), "no table yet");
    assert!(g.status().listeners["out"].contains("route table"));

    g.set_tables([&table("r", "c")]);
    assert!(
        step(&mut g, t0).1.is_empty(),
        "the table's cluster is unknown"
    );
    assert!(g.status().listeners["out"].contains("\"c\""));

    g.set_clusters(vec![eds("c", Some("c-eds"))], t0);
    let (c, l) = step(&mut g, t0);
    assert!(c.is_empty() && l.is_empty(), "the cluster waits for EDS");
    assert!(g.status().clusters["c"].contains("c-eds"));

    g.eds_arrived("c-eds");
    let (c, l) = step(&mut g, t0);
    assert_eq!(names(&c, |c| &c.name), ["c"]);
    assert_eq!(names(&l, |l| &l.name), ["out"]);
    assert!(g.status().is_empty());
    assert_eq!(g.next_deadline(), None);
}

#[test]
fn an_updated_listener_keeps_its_live_version_while_the_new_one_warms() {
    let t0 = Instant::now();
    let mut g = WarmingGate::new(Some(DEFAULT_INITIAL_FETCH_TIMEOUT));
    g.set_clusters(vec![Cluster::new("c")], t0);
    g.set_tables([&table("r1", "c")]);
    let old = listener("out", 1, "r1");
    g.set_listeners(vec![old.clone()], t0);
    assert_eq!(step(&mut g, t0).1, std::slice::from_ref(&old));

    let new = listener("out", 1, "r2");
    let t1 = t0 + Duration::from_secs(1);
    g.set_listeners(vec![new.clone()], t1);
    assert_eq!(
        step(&mut g, t1).1,
        std::slice::from_ref(&old),
        "the old version serves"
    );
    assert_eq!(g.warming_listeners().count(), 1);
    assert!(g.listeners_differ(std::slice::from_ref(&new)));
    assert!(!g.listeners_differ(std::slice::from_ref(&old)));

    g.set_tables([&table("r1", "c"), &table("r2", "c")]);
    assert_eq!(step(&mut g, t1).1, [new]);
    assert_eq!(g.warming_listeners().count(), 0);
}

#[test]
fn a_new_eds_cluster_is_absent_and_an_updated_one_keeps_its_old_version_until_eds() {
    let t0 = Instant::now();
    let mut g = WarmingGate::new(None);
    g.set_clusters(vec![eds("a", None), Cluster::new("s")], t0);
    let (c, _) = step(&mut g, t0);
    assert_eq!(
        names(&c, |c| &c.name),
        ["s"],
        "a static cluster is warm at once"
    );

    g.eds_arrived("a");
    assert_eq!(names(&step(&mut g, t0).0, |c| &c.name), ["a", "s"]);

    // `a` moves to another EDS name, `s` becomes an EDS cluster: both keep their old version.
    let (a2, s2) = (eds("a", Some("a2")), eds("s", None));
    g.set_clusters(vec![a2.clone(), s2.clone()], t0);
    let (c, _) = step(&mut g, t0);
    assert_eq!(c[0], eds("a", None));
    assert_eq!(c[1], Cluster::new("s"));
    assert_eq!(g.status().clusters.len(), 2);

    g.eds_arrived("a2");
    g.eds_arrived("s");
    assert_eq!(step(&mut g, t0).0, [a2, s2]);

    // A removed assignment makes a cluster added later under its name warm again.
    g.eds_removed("a2");
    g.set_clusters(vec![eds("b", Some("a2"))], t0);
    assert!(step(&mut g, t0).0.is_empty());
}

#[test]
fn the_initial_fetch_timeout_makes_a_warming_resource_live_with_what_it_has() {
    let t0 = Instant::now();
    let timeout = Duration::from_millis(500);
    let mut g = WarmingGate::new(Some(timeout));
    g.set_clusters(vec![eds("c", None)], t0);
    g.set_listeners(vec![listener("out", 1, "never")], t0);
    assert_eq!(step(&mut g, t0), (vec![], vec![]));
    assert_eq!(g.next_deadline(), Some(t0 + timeout));

    let just_before = t0 + timeout - Duration::from_millis(1);
    assert_eq!(step(&mut g, just_before), (vec![], vec![]));
    // A resend of the same config keeps the clock; a changed one starts it over.
    g.set_listeners(vec![listener("out", 1, "never")], just_before);
    assert_eq!(g.next_deadline(), Some(t0 + timeout));

    let (c, l) = step(&mut g, t0 + timeout);
    assert_eq!((c.len(), l.len()), (1, 1), "both go live on the deadline");
    assert_eq!(g.next_deadline(), None);

    let later = t0 + Duration::from_secs(3);
    g.set_listeners(vec![listener("out", 1, "other")], later);
    assert_eq!(g.next_deadline(), Some(later + timeout));
}

#[test]
fn without_a_timeout_warming_waits_for_ever() {
    let t0 = Instant::now();
    let mut g = WarmingGate::new(None);
    g.set_listeners(vec![listener("out", 1, "r")], t0);
    assert_eq!(g.next_deadline(), None);
    assert!(step(&mut g, t0 + Duration::from_secs(3600)).1.is_empty());
}

#[test]
fn an_inline_table_waits_only_for_its_clusters() {
    let t0 = Instant::now();
    let mut g = WarmingGate::new(None);
    let mut l = listener("in", 1, "");
    l.route_config = Some(table("inline", "app"));
    g.set_listeners(vec![l], t0);
    assert!(step(&mut g, t0).1.is_empty());
    g.set_clusters(vec![Cluster::new("app")], t0);
    assert_eq!(step(&mut g, t0).1.len(), 1);
}

#[test]
fn a_weighted_route_waits_for_every_cluster_it_names() {
    let rc: RouteConfiguration = mesh_core::yaml::from_str(
        "{ name: r, virtual_hosts: [ { name: v, domains: ['*'], routes: [ \
           { match: { prefix: '/a' }, route: { weighted_clusters: [ { name: x, weight: 1 }, { name: y, weight: 1 } ] } }, \
           { match: { prefix: '/' }, route: { cluster_header: x-target } } ] } ] }",
    )
    .unwrap();
    let got: Vec<String> = super::table_clusters(&rc).into_iter().collect();
    assert_eq!(got, ["x", "y"]);
}

#[test]
fn an_opaque_only_listener_waits_for_its_tcp_proxy_clusters_only() {
    let t0 = Instant::now();
    let mut g = WarmingGate::new(None);
    let l: Listener = mesh_core::yaml::from_str(
        "{ name: tcp, address: '127.0.0.1:1', direction: outbound, tcp_proxy: { destination: { cluster: db } } }",
    )
    .unwrap();
    g.set_listeners(vec![l], t0);
    assert!(step(&mut g, t0).1.is_empty());
    assert!(
        g.status().listeners["tcp"].contains("\"db\""),
        "{:?}",
        g.status()
    );
    g.set_clusters(vec![Cluster::new("db")], t0);
    assert_eq!(step(&mut g, t0).1.len(), 1, "no route table to wait for");
}

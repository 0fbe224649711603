//! Outlier detection and active health checks against real loopback servers (short real
//! times: the servers' sockets rule out tokio's paused clock here; the time arithmetic itself is
//! unit-tested).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mesh_core::{HealthCheck, LbPolicy, OutlierDetection, Reload};
use mesh_lb::LoadBalance;

fn outlier(max_percent: u32) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: 3,
        consecutive_gateway_failure: 2,
        interval: Duration::from_millis(50),
        base_ejection_time: Duration::from_millis(400),
        max_ejection_time: Duration::from_secs(10),
        max_ejection_percent: max_percent,
    }
}

#[tokio::test]
async fn failing_endpoint_is_ejected_and_returns() {
    let s = servers(3).await;
    s[1].status.store(500, Ordering::SeqCst);
    let mut c = cluster("c", LbPolicy::RoundRobin, &s, &[1, 1, 1]);
    c.outlier_detection = Some(outlier(50));
    let m = manager(vec![c]);
    let svc = LoadBalance::upstream(m.clone());
    let bad = m.get("c").unwrap().endpoints()[&s[1].addr].clone();
    for _ in 0..9 {
        send(&svc, "c", Opts::default()).await.unwrap();
    }
    assert!(bad.is_ejected(), "3 consecutive 500s eject it");
    assert!(eventually(2, || m.get("c").unwrap().endpoint_set().healthy() == 2).await);
    let before = s[1].served.load(Ordering::SeqCst);
    let c = tally(&svc, "c", 30, 3).await;
    assert_eq!(c[1], 0, "{c:?}");
    assert_eq!(s[1].served.load(Ordering::SeqCst), before);
    // It recovers; after the ejection time a sweep returns it.
    s[1].status.store(200, Ordering::SeqCst);
    assert!(eventually(3, || !bad.is_ejected()).await);
    assert!(eventually(2, || m.get("c").unwrap().endpoint_set().healthy() == 3).await);
    assert_eq!(tally(&svc, "c", 30, 3).await, vec![10, 10, 10]);
    assert_eq!(bad.ejections(), 1);
}

#[tokio::test]
async fn max_ejection_percent_keeps_most_of_the_cluster() {
    let s = servers(3).await;
    s[0].status.store(500, Ordering::SeqCst);
    s[1].status.store(500, Ordering::SeqCst);
    let mut c = cluster("c", LbPolicy::RoundRobin, &s, &[1, 1, 1]);
    c.outlier_detection = Some(outlier(30));
    let m = manager(vec![c]);
    let svc = LoadBalance::upstream(m.clone());
    for _ in 0..60 {
        send(&svc, "c", Opts::default()).await.unwrap();
    }
    let eps = m.get("c").unwrap().endpoints();
    let ejected = eps.values().filter(|e| e.is_ejected()).count();
    assert_eq!(
        ejected, 1,
        "one of 3 is 33 %, past the 30 % maximum: no second ejection"
    );
}

#[tokio::test]
async fn connect_failures_eject_and_traffic_moves_on() {
    let s = servers(2).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut c = cluster("c", LbPolicy::RoundRobin, &s, &[1, 1]);
    c.load_assignment = Some(mesh_core::ClusterLoadAssignment::from_addrs(
        "c",
        [s[0].addr, s[1].addr, dead],
    ));
    c.outlier_detection = Some(outlier(50));
    let m = manager(vec![c]);
    let svc = LoadBalance::upstream(m.clone());
    let mut failures = 0;
    for _ in 0..9 {
        failures += usize::from(send(&svc, "c", Opts::default()).await.is_err());
    }
    assert_eq!(failures, 2, "two gateway failures eject the dead endpoint");
    assert!(m.get("c").unwrap().endpoints()[&dead].is_ejected());
    assert!(eventually(2, || m.get("c").unwrap().endpoint_set().healthy() == 2).await);
    for _ in 0..20 {
        send(&svc, "c", Opts::default()).await.unwrap();
    }
}

fn health_check() -> HealthCheck {
    HealthCheck {
        path: "/health".into(),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        host: None,
    }
}

#[tokio::test]
async fn health_checks_mark_down_and_up() {
    let s = servers(2).await;
    let mut c = cluster("c", LbPolicy::RoundRobin, &s, &[1, 1]);
    c.health_check = Some(health_check());
    c.healthy_panic_threshold = 0.0;
    let m = manager(vec![c]);
    let svc = LoadBalance::upstream(m.clone());
    let ep0 = m.get("c").unwrap().endpoints()[&s[0].addr].clone();
    assert!(eventually(2, || s[0].health_checks.load(Ordering::SeqCst) >= 2).await);
    assert!(ep0.is_health_check_ok());

    s[0].health.store(503, Ordering::SeqCst);
    assert!(
        eventually(3, || !ep0.is_health_check_ok()).await,
        "marked down"
    );
    assert!(eventually(2, || m.get("c").unwrap().endpoint_set().healthy() == 1).await);
    assert_eq!(tally(&svc, "c", 20, 2).await, vec![0, 20]);

    s[0].health.store(200, Ordering::SeqCst);
    assert!(
        eventually(3, || ep0.is_health_check_ok()).await,
        "marked up"
    );
    assert!(eventually(2, || m.get("c").unwrap().endpoint_set().healthy() == 2).await);
    assert_eq!(tally(&svc, "c", 20, 2).await, vec![10, 10]);
}

#[tokio::test]
async fn background_tasks_end_with_their_cluster() {
    let s = servers(1).await;
    let mut c = cluster("c", LbPolicy::RoundRobin, &s, &[1]);
    c.health_check = Some(health_check());
    c.outlier_detection = Some(outlier(50));
    let m = manager(vec![c]);
    assert!(eventually(2, || s[0].health_checks.load(Ordering::SeqCst) >= 2).await);
    let weak = std::sync::Arc::downgrade(&m.get("c").unwrap());
    m.reload(Vec::new()).unwrap();
    assert!(weak.upgrade().is_none(), "nothing else holds the cluster");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = s[0].health_checks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s[0].health_checks.load(Ordering::SeqCst),
        after,
        "checks stopped"
    );
}

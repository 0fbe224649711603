//! Circuit breakers against real loopback servers: refused at once, counted, released.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;

use common::*;
use mesh_core::{CircuitBreakers, LbPolicy, MeshError};
use mesh_lb::LoadBalance;

fn limited(s: &[TestServer], limits: CircuitBreakers) -> LoadBalance<mesh_lb::Upstream> {
    let mut c = cluster("c", LbPolicy::RoundRobin, s, &[1]);
    c.circuit_breakers = limits;
    LoadBalance::upstream(manager(vec![c]))
}

async fn concurrently(
    svc: &LoadBalance<mesh_lb::Upstream>,
    reqs: Vec<Opts>,
) -> Vec<Result<(u16, usize), MeshError>> {
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|o| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, "c", o).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn open_with(results: &[Result<(u16, usize), MeshError>], limit: &str) -> usize {
    results
        .iter()
        .filter(|r| matches!(r, Err(MeshError::CircuitOpen { limit: l, .. }) if *l == limit))
        .count()
}

#[tokio::test]
async fn max_requests_refuses_at_once_and_releases() {
    let s = servers(1).await;
    s[0].delay_ms.store(300, Ordering::SeqCst);
    let svc = limited(
        &s,
        CircuitBreakers {
            max_requests: 2,
            ..CircuitBreakers::default()
        },
    );
    let started = tokio::time::Instant::now();
    let results = concurrently(&svc, vec![Opts::default(); 5]).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        2,
        "{results:?}"
    );
    assert_eq!(open_with(&results, "max_requests"), 3, "{results:?}");
    let e = results.iter().find_map(|r| r.clone().err()).unwrap();
    assert_eq!(e.status(), 503);
    assert!(started.elapsed().as_millis() < 2_000);
    // Released once the admitted requests finished.
    s[0].delay_ms.store(0, Ordering::SeqCst);
    assert!(send(&svc, "c", Opts::default()).await.is_ok());
}

#[tokio::test]
async fn max_retries_counts_only_retries() {
    let s = servers(1).await;
    s[0].delay_ms.store(300, Ordering::SeqCst);
    let svc = limited(
        &s,
        CircuitBreakers {
            max_retries: 1,
            ..CircuitBreakers::default()
        },
    );
    let retry = Opts {
        retry: Some(1),
        hash: None,
    };
    let results = concurrently(&svc, vec![retry, retry, Opts::default(), Opts::default()]).await;
    assert_eq!(open_with(&results, "max_retries"), 1, "{results:?}");
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        3,
        "{results:?}"
    );
}

#[tokio::test]
async fn max_connections_refuses_a_second_connection() {
    let s = servers(1).await;
    s[0].delay_ms.store(300, Ordering::SeqCst);
    let mut c = cluster("c", LbPolicy::RoundRobin, &s, &[1]);
    c.circuit_breakers.max_connections = 1;
    let m = manager(vec![c]);
    let svc = LoadBalance::upstream(m.clone());
    // HTTP/1.1: the only connection is busy with the first request, so the second needs a new
    // one and is refused.
    let first = {
        let svc = svc.clone();
        tokio::spawn(async move { send(&svc, "c", Opts::default()).await })
    };
    assert!(
        eventually(2, || m
            .get("c")
            .unwrap()
            .circuit_breaker()
            .stats()
            .connections
            == 1)
        .await
    );
    let second = send(&svc, "c", Opts::default()).await;
    assert!(
        matches!(
            &second,
            Err(MeshError::CircuitOpen {
                limit: "max_connections",
                ..
            })
        ),
        "{second:?}"
    );
    assert!(first.await.unwrap().is_ok());
    let stats = m.get("c").unwrap().circuit_breaker().stats();
    assert_eq!(stats.connections_overflow, 1);
    assert_eq!(s[0].accepted.load(Ordering::SeqCst), 1);
    // The connection is idle again: the next request reuses it.
    s[0].delay_ms.store(0, Ordering::SeqCst);
    assert!(send(&svc, "c", Opts::default()).await.is_ok());
}

//! Active HTTP health checking: every `interval`, `GET path` on every endpoint; a 2xx within
//! `timeout` is a success. `unhealthy_threshold` consecutive failures mark an endpoint down,
//! `healthy_threshold` consecutive successes mark it up again; each transition rebuilds the
//! endpoint set. Checks use their own small client, so they never count against the cluster's
//! breakers nor take its pooled connections.
//!
//! New endpoints start healthy (Envoy starts them failed until a first check passes): an EDS
//! update then never empties a cluster while its new endpoints await their first check.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{header, Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_core::{HealthCheck, UpstreamProtocol};
use tokio_util::sync::CancellationToken;

use crate::endpoint::EndpointState;
use crate::health::HealthTarget;

/// Applies one check result; true when the endpoint changed state.
pub(crate) fn apply(ep: &EndpointState, hc: &HealthCheck, ok: bool) -> bool {
    if ok {
        ep.hc_failures.store(0, Ordering::Relaxed);
        let s = ep.hc_successes.fetch_add(1, Ordering::Relaxed) + 1;
        s >= hc.healthy_threshold && !ep.hc_healthy.swap(true, Ordering::AcqRel)
    } else {
        ep.hc_successes.store(0, Ordering::Relaxed);
        let f = ep.hc_failures.fetch_add(1, Ordering::Relaxed) + 1;
        f >= hc.unhealthy_threshold && ep.hc_healthy.swap(false, Ordering::AcqRel)
    }
}

/// The health-check task of one cluster. Ends when the cluster is dropped.
pub(crate) async fn run<C: HealthTarget>(
    cluster: Weak<C>,
    token: CancellationToken,
    hc: HealthCheck,
    protocol: UpstreamProtocol,
    name: Arc<str>,
) {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(hc.timeout));
    http.set_nodelay(true);
    let h2 = protocol == UpstreamProtocol::Http2;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(1)
        .http2_only(h2)
        .build(http);
    let host = hc.host.clone().unwrap_or_else(|| name.to_string());
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let endpoints = c.endpoint_map().load_full();
        drop(c);
        let checks = endpoints.values().map(|ep| {
            let (client, host, hc) = (&client, &host, &hc);
            async move {
                let ok = check(client, ep.address(), host, hc, h2).await;
                apply(ep, hc, ok)
            }
        });
        let changed = tokio::select! {
            _ = token.cancelled() => return,
            results = join_all(checks) => results.into_iter().any(|c| c),
        };
        if changed {
            let Some(c) = cluster.upgrade() else { return };
            c.rebuild();
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(hc.interval) => {}
        }
    }
}

async fn check(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    host: &str,
    hc: &HealthCheck,
    h2: bool,
) -> bool {
    let uri = format!("http://{addr}{}", hc.path);
    let Ok(req) = Request::get(uri)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "mesh-health-check")
        .version(if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        })
        .body(Empty::new())
    else {
        return false;
    };
    let attempt = async {
        let resp = client.request(req).await.ok()?;
        let ok = resp.status().is_success();
        // Read the body so the connection can be reused for the next check.
        resp.into_body().collect().await.ok()?;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(hc.timeout, attempt).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_drive_transitions() {
        let hc = HealthCheck {
            path: "/h".into(),
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            host: None,
        };
        let ep = EndpointState::new("127.0.0.1:1".parse().unwrap());
        assert!(!apply(&ep, &hc, false));
        assert!(!apply(&ep, &hc, false));
        assert!(apply(&ep, &hc, false), "third failure marks it down");
        assert!(!ep.is_healthy());
        assert!(!apply(&ep, &hc, false), "already down");
        assert!(!apply(&ep, &hc, true));
        assert!(apply(&ep, &hc, true), "second success marks it up");
        assert!(ep.is_healthy());
    }
}

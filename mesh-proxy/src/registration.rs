//! The registration API (the seeds' pub/sub) on the admin endpoint:
//!
//! - `POST /pub` `{"service", "address", "port", "weight"?, "zone"?, "metadata"?}`: the local
//!   service publishes itself; the sidecar writes it to the registry (etcd, under
//!   `<prefix>/services/<service>/<ip:port>`, the control plane's layout) under the sidecar's
//!   lease, which it keeps alive, so the entry vanishes when the sidecar dies;
//! - `POST /unpub` `{"service", "address", "port"}`: withdraws it;
//! - `POST /sub` `{"service"}`: subscribes, and returns the service's endpoints as this sidecar's
//!   mesh sees them (what EDS delivered, with health);
//! - `POST /unsub` `{"service"}`: drops the subscription.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, PutOptions};
use http::{Method, Response, StatusCode};
use mesh_core::{body, Body, Registration};
use mesh_lb::ClusterManager;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, AdminHandler};

/// Why the registry could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("registry {url}: {source}")]
pub struct RegistryError {
    url: String,
    source: etcd_client::Error,
}

/// The sidecar's link to the registry: one lease, kept alive, that every publication rides on.
#[derive(Clone)]
pub struct Registrar {
    client: Client,
    prefix: String,
    lease: i64,
    clusters: ClusterManager,
    subscriptions: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    service: String,
    address: IpAddr,
    port: u16,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unpublish {
    service: String,
    address: IpAddr,
    port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    service: String,
}

fn one() -> u32 {
    1
}

impl Registrar {
    /// Connects to etcd at `url`, grants a lease of `ttl` and keeps it alive (every `ttl / 3`)
    /// until `stop` is cancelled; then the lease is revoked, so a clean stop deregisters at once
    /// and a crash deregisters after `ttl`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
        clusters: ClusterManager,
        stop: CancellationToken,
    ) -> Result<Self, RegistryError> {
        let err = |source| RegistryError {
            url: url.to_string(),
            source,
        };
        let endpoint = url.trim_start_matches("http://").to_string();
        let mut client = Client::connect([endpoint], None).await.map_err(err)?;
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = client.lease_grant(secs, None).await.map_err(err)?.id();
        let mut keeper = client.clone();
        let every = (ttl / 3).max(Duration::from_millis(200));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut stream = None;
            loop {
                tokio::select! {
                    () = stop.cancelled() => {
                        let _ = keeper.lease_revoke(lease).await;
                        return;
                    }
                    _ = tick.tick() => {}
                }
                if stream.is_none() {
                    stream = keeper.lease_keep_alive(lease).await.ok();
                }
                if let Some((keeper_tx, responses)) = stream.as_mut() {
                    let ok =
                        keeper_tx.keep_alive().await.is_ok() && responses.message().await.is_ok();
                    if !ok {
                        tracing::warn!(lease, "registry keep-alive failed; retrying");
                        stream = None;
                    }
                }
            }
        });
        Ok(Self {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            lease,
            clusters,
            subscriptions: Arc::default(),
        })
    }

    /// Adds `/pub`, `/unpub`, `/sub` and `/unsub` to `admin`.
    pub fn install(self, admin: Admin) -> Admin {
        let route = |f: fn(Registrar, Bytes) -> HandlerFuture| -> AdminHandler {
            let me = self.clone();
            Arc::new(move |method: Method, body: Bytes| {
                let me = me.clone();
                if method != Method::POST {
                    return Box::pin(async {
                        reply(StatusCode::METHOD_NOT_ALLOWED, "POST only".into())
                    });
                }
                f(me, body)
            })
        };
        admin
            .with_route("/pub", route(|me, b| Box::pin(me.publish(b))))
            .with_route("/unpub", route(|me, b| Box::pin(me.unpublish(b))))
            .with_route("/sub", route(|me, b| Box::pin(me.subscribe(b))))
            .with_route("/unsub", route(|me, b| Box::pin(me.unsubscribe(b))))
    }

    async fn publish(mut self, body: Bytes) -> Response<Body> {
        let p: Publish = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("/pub: {e}")),
        };
        if p.service.is_empty() || p.service.contains('/') || p.port == 0 || p.weight == 0 {
            return reply(
                StatusCode::BAD_REQUEST,
                "/pub: service must be a name, port and weight non-zero".into(),
            );
        }
        let reg = Registration {
            address: p.address,
            port: p.port,
            weight: p.weight,
            metadata: p.metadata,
            zone: p.zone,
        };
        let key = reg.key(&self.prefix, &p.service);
        let value = serde_json::to_string(&reg).unwrap_or_default();
        match self
            .client
            .put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await
        {
            Ok(_) => reply(
                StatusCode::OK,
                serde_json::json!({ "key": key, "lease": self.lease }).to_string(),
            ),
            Err(e) => reply(StatusCode::BAD_GATEWAY, format!("registry: {e}")),
        }
    }

    async fn unpublish(mut self, body: Bytes) -> Response<Body> {
        let u: Unpublish = match serde_json::from_slice(&body) {
            Ok(u) => u,
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("/unpub: {e}")),
        };
        let key =
            Registration::new(SocketAddr::new(u.address, u.port)).key(&self.prefix, &u.service);
        match self.client.delete(key.clone(), None).await {
            Ok(r) if r.deleted() > 0 => reply(
                StatusCode::OK,
                serde_json::json!({ "key": key }).to_string(),
            ),
            Ok(_) => reply(StatusCode::NOT_FOUND, format!("{key} is not published")),
            Err(e) => reply(StatusCode::BAD_GATEWAY, format!("registry: {e}")),
        }
    }

    async fn subscribe(self, body: Bytes) -> Response<Body> {
        let s: Subscribe = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("/sub: {e}")),
        };
        self.subs().insert(s.service.clone());
        let endpoints: Vec<serde_json::Value> = match self.clusters.get(&s.service) {
            Some(c) => {
                let mut eps: Vec<_> = c
                    .endpoints()
                    .values()
                    .map(|e| serde_json::json!({ "address": e.address(), "healthy": e.is_healthy() }))
                    .collect();
                eps.sort_by_key(|v| v["address"].to_string());
                eps
            }
            None => Vec::new(),
        };
        reply(
            StatusCode::OK,
            serde_json::json!({ "service": s.service, "endpoints": endpoints }).to_string(),
        )
    }

    async fn unsubscribe(self, body: Bytes) -> Response<Body> {
        let s: Subscribe = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => return reply(StatusCode::BAD_REQUEST, format!("/unsub: {e}")),
        };
        if self.subs().remove(&s.service) {
            reply(
                StatusCode::OK,
                serde_json::json!({ "service": s.service }).to_string(),
            )
        } else {
            reply(
                StatusCode::NOT_FOUND,
                format!("not subscribed to {:?}", s.service),
            )
        }
    }

    /// The services subscribed to.
    pub fn subscriptions(&self) -> Vec<String> {
        self.subs().iter().cloned().collect()
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

type HandlerFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>;

fn reply(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(body::full(text));
    *r.status_mut() = status;
    r
}

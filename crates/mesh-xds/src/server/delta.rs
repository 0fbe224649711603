//! A delta discovery stream (ADS or one type's service): only what changed is sent, per
//! resource, by comparing content hashes with what the client holds.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource,
};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::cache::{lock, Current};
use super::resource::ResourceType;
use super::snapshot::Snapshot;
use super::xds::{Shared, StreamGuard};

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: name → content hash.
    held: HashMap<String, u64>,
    nonce: String,
    /// Type version and resource names of the last response (to ACK, or to forget on NACK).
    last_version: String,
    last_names: Vec<String>,
    set_at: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Updates,
    Removals,
    Both,
}

struct Delta {
    shared: Arc<Shared>,
    guard: StreamGuard,
    fixed: Option<ResourceType>,
    node: Option<String>,
    rx: Option<watch::Receiver<Current>>,
    types: HashMap<ResourceType, TypeState>,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

/// Serves one delta stream until the client goes away.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    guard: StreamGuard,
    fixed: Option<ResourceType>,
    mut requests: S,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) where
    S: Stream<Item = Result<DeltaDiscoveryRequest, Status>> + Unpin,
{
    let mut d = Delta {
        shared,
        guard,
        fixed,
        node: None,
        rx: None,
        types: HashMap::new(),
        nonce: 0,
        tx,
    };
    loop {
        let changed = async {
            match d.rx.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            req = requests.next() => match req {
                Some(Ok(req)) => {
                    if let Err(status) = d.on_request(req).await {
                        let _ = d.tx.send(Err(status)).await;
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(stream = d.guard.id, error = %e, "delta xDS stream error");
                    break;
                }
                None => break,
            },
            ok = changed => {
                if !ok || d.push_all().await.is_err() {
                    break;
                }
            }
        }
    }
}

impl Delta {
    fn current(&self) -> Option<(Arc<Snapshot>, Instant)> {
        let rx = self.rx.as_ref()?;
        let cur = rx.borrow();
        Some((cur.snapshot.clone()?, cur.set_at))
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Status> {
        let kind = match self.fixed {
            Some(k) if req.type_url.is_empty() || req.type_url == k.type_url() => k,
            Some(k) => {
                return Err(Status::invalid_argument(format!(
                    "this service serves {}, not {}",
                    k.type_url(),
                    req.type_url
                )))
            }
            None => match ResourceType::from_type_url(&req.type_url) {
                Some(k) => k,
                None => return Ok(()),
            },
        };
        let node = match &self.node {
            Some(n) => n.clone(),
            None => {
                let node = req.node.as_ref().ok_or_else(|| {
                    Status::invalid_argument("the first request must carry a node")
                })?;
                let key = self.shared.cache.node_key(node);
                self.rx = Some(self.shared.cache.watch(&key));
                self.node = Some(key.clone());
                key
            }
        };
        self.shared.callbacks.request(self.guard.id, &node, kind);
        let first = !self.types.contains_key(&kind);
        let st = self.types.entry(kind).or_default();
        if first {
            st.wildcard = req.resource_names_subscribe.is_empty() && kind.is_full_state();
            for (name, version) in &req.initial_resource_versions {
                // Versions are our content hashes; anything else cannot match and is re-sent.
                let hash = u64::from_str_radix(version, 16).unwrap_or(u64::MAX);
                st.held.insert(name.clone(), hash);
            }
        }
        if !req.response_nonce.is_empty() && req.response_nonce == st.nonce {
            let status = self.shared.cache.status(&node);
            match &req.error_detail {
                Some(err) => {
                    tracing::warn!(node = %node, %kind, version = %st.last_version,
                        error = %err.message, "delta NACK");
                    lock(&status).nack(kind, &st.last_version, &err.message);
                    self.shared
                        .callbacks
                        .nack(&node, kind, &st.last_version, &err.message);
                    // The client refused them: it does not hold them.
                    for n in std::mem::take(&mut st.last_names) {
                        st.held.remove(&n);
                    }
                }
                None => {
                    lock(&status).ack(kind, &st.last_version);
                    let since = st.set_at.map(|t| t.elapsed()).unwrap_or_default();
                    self.shared
                        .callbacks
                        .ack(&node, kind, &st.last_version, since);
                }
            }
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(n.clone());
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(n);
                if !st.wildcard {
                    st.held.remove(n);
                }
            }
        }
        self.respond(kind, Part::Both).await
    }

    /// On a snapshot change: every type's updates in dependency order, then removals in
    /// reverse order (what referenced a removed resource is updated before it goes).
    async fn push_all(&mut self) -> Result<(), Status> {
        for kind in ResourceType::ALL {
            self.respond(kind, Part::Updates).await?;
        }
        for kind in ResourceType::ALL.iter().rev() {
            self.respond(*kind, Part::Removals).await?;
        }
        Ok(())
    }

    async fn respond(&mut self, kind: ResourceType, part: Part) -> Result<(), Status> {
        let Some((snap, set_at)) = self.current() else {
            return Ok(());
        };
        let node = self.node.clone().unwrap_or_default();
        let Some(st) = self.types.get_mut(&kind) else {
            return Ok(());
        };
        let ts = snap.of(kind);
        let version = ts.version();
        if self.shared.cache.is_parked(&node, kind, &version) {
            return Ok(());
        }
        let mut updates = Vec::new();
        if part != Part::Removals {
            let wanted: Box<dyn Iterator<Item = _>> = if st.wildcard {
                Box::new(ts.items().values())
            } else {
                Box::new(st.names.iter().filter_map(|n| ts.get(n)))
            };
            for r in wanted {
                if st.held.get(r.name()) != Some(&r.hash()) {
                    updates.push(r.clone());
                }
            }
        }
        let mut removed = Vec::new();
        if part != Part::Updates {
            removed = st
                .held
                .keys()
                .filter(|n| ts.get(n).is_none())
                .cloned()
                .collect();
            removed.sort();
        }
        if updates.is_empty() && removed.is_empty() {
            return Ok(());
        }
        for r in &updates {
            st.held.insert(r.name().to_owned(), r.hash());
        }
        for n in &removed {
            st.held.remove(n);
        }
        self.nonce += 1;
        st.nonce = self.nonce.to_string();
        st.last_version = version.clone();
        st.last_names = updates.iter().map(|r| r.name().to_owned()).collect();
        st.set_at = Some(set_at);
        let resp = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources: updates
                .iter()
                .map(|r| WireResource {
                    name: r.name().to_owned(),
                    version: r.version(),
                    resource: Some(r.any().clone()),
                    ..WireResource::default()
                })
                .collect(),
            type_url: kind.type_url().to_owned(),
            removed_resources: removed,
            nonce: st.nonce.clone(),
            ..DeltaDiscoveryResponse::default()
        };
        self.shared
            .callbacks
            .response(self.guard.id, &node, kind, &version, updates.len());
        self.tx
            .send(Ok(resp))
            .await
            .map_err(|_| Status::cancelled("client gone"))
    }
}

//! A delta discovery stream (ADS or one type's service): only what changed is sent, per
//! resource, by comparing content hashes with what the client holds.

use std::collections::{BTreeSet, HashMap};

use super::held::Held;
use super::resource::Resource;
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
    /// What the client holds.
    held: Held,
    /// The type version the client was fully brought to (nothing to add or remove), so a push
    /// that did not change this type costs one comparison.
    synced: Option<u64>,
    /// Nonces of the last push (one per chunk); an answer to any of them counts.
    nonces: Vec<String>,
    /// Type version and resource names of the last response (to ACK, or to forget on NACK).
    last_version: String,
    last_sent: Vec<Arc<Resource>>,
    set_at: Option<Instant>,
}

/// Target size of one delta response's resources.
const CHUNK_BYTES: usize = 16 * 1024;

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
        // Anything in a request may change what the client needs.
        st.synced = None;
        if first {
            st.wildcard = req.resource_names_subscribe.is_empty() && kind.is_full_state();
            for (name, version) in &req.initial_resource_versions {
                // Versions are our content hashes; anything else cannot match and is re-sent.
                let hash = u64::from_str_radix(version, 16).unwrap_or(u64::MAX);
                st.held.announce(name.clone(), hash);
            }
        }
        if !req.response_nonce.is_empty() && st.nonces.contains(&req.response_nonce) {
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
                    for r in std::mem::take(&mut st.last_sent) {
                        st.held.remove(r.name());
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
        if st.synced == Some(ts.version_hash()) {
            return Ok(());
        }
        let version = ts.version();
        if self.shared.cache.is_parked(&node, kind, &version) {
            return Ok(());
        }
        if part != Part::Updates {
            // After this call the client holds exactly what the type's version has for it.
            st.synced = Some(ts.version_hash());
        }
        let mut updates = Vec::new();
        if part != Part::Removals {
            let wanted: Box<dyn Iterator<Item = _>> = if st.wildcard {
                Box::new(ts.items().values())
            } else {
                Box::new(st.names.iter().filter_map(|n| ts.get(n)))
            };
            for r in wanted {
                if !st.held.holds(r) {
                    updates.push(r.clone());
                }
            }
        }
        let mut removed = Vec::new();
        if part != Part::Updates {
            removed = st.held.gone(|n| ts.get(n).is_some());
        }
        if updates.is_empty() && removed.is_empty() {
            return Ok(());
        }
        for r in &updates {
            st.held.insert(r.clone());
        }
        for n in &removed {
            st.held.remove(n);
        }
        st.last_version = version.clone();
        st.last_sent.clone_from(&updates);
        st.set_at = Some(set_at);
        st.nonces.clear();
        self.shared
            .callbacks
            .response(self.guard.id, &node, kind, &version, updates.len());
        // Large pushes (a first sync of thousands of endpoints) go in chunks of about
        // CHUNK_BYTES: the transport keeps a buffer as large as the largest message it sent for
        // the life of the stream, so bounded messages keep per-subscriber memory bounded.
        let mut chunks: Vec<Vec<WireResource>> = vec![Vec::new()];
        let mut size = 0;
        for r in &updates {
            let len = r.any().value.len();
            if size + len > CHUNK_BYTES && !chunks.last().is_some_and(Vec::is_empty) {
                chunks.push(Vec::new());
                size = 0;
            }
            size += len;
            if let Some(c) = chunks.last_mut() {
                c.push(WireResource {
                    name: r.name().to_owned(),
                    version: r.version(),
                    resource: Some(r.any().clone()),
                    ..WireResource::default()
                });
            }
        }
        let last = chunks.len() - 1;
        let mut removed = Some(removed);
        for (i, resources) in chunks.into_iter().enumerate() {
            self.nonce += 1;
            let nonce = self.nonce.to_string();
            st.nonces.push(nonce.clone());
            let resp = DeltaDiscoveryResponse {
                system_version_info: version.clone(),
                resources,
                type_url: kind.type_url().to_owned(),
                removed_resources: if i == last {
                    removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                nonce,
                ..DeltaDiscoveryResponse::default()
            };
            self.tx
                .send(Ok(resp))
                .await
                .map_err(|_| Status::cancelled("client gone"))?;
        }
        Ok(())
    }
}

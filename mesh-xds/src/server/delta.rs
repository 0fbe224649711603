//! A delta discovery stream (ADS or one type's service): only what changed is sent, per
//! resource, by comparing content hashes with what the client holds.

use super::held::Held;
use super::names::Names;
use super::resource::Resource;
use super::snapshot::Snapshot;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tonic::Status;

use super::cache::lock;
use super::stream::{intern, PerType, Protocol, StreamBase};
use super::wire::Encoded;
use crate::ResourceType;

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    names: Names,
    /// What the client holds.
    held: Held,
    /// The snapshot whose version of this type the client was fully brought to (nothing to
    /// add or remove): a push that did not change the type costs one comparison, and one that
    /// did looks only at what changed since.
    synced: Option<Arc<Snapshot>>,
    /// Nonces of the last push (one per chunk); an answer to any of them counts.
    nonces: Vec<String>,
    /// Type version and resource names of the last response (to ACK, or to forget on NACK).
    last_version: String,
    last_sent: Vec<Arc<Resource>>,
    set_at: Option<Instant>,
}

/// Target size of one delta response's resources.
const CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Updates,
    Removals,
    Both,
}

pub(crate) struct Delta {
    base: StreamBase,
    types: PerType<TypeState>,
}

impl Delta {
    pub(crate) fn new(base: StreamBase) -> Self {
        Self {
            base,
            types: PerType::default(),
        }
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;

    fn base(&mut self) -> &mut StreamBase {
        &mut self.base
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Status> {
        self.handle(req).await
    }

    async fn push_all(&mut self) -> Result<(), Status> {
        self.push().await
    }
}

impl Delta {
    async fn handle(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Status> {
        let Some((kind, node)) = self.base.begin(&req.type_url, req.node.as_ref())? else {
            return Ok(());
        };
        let first = !self.types.contains(kind);
        let st = self.types.get_or_default(kind);
        // A subscription change or a NACK changes what the client needs or holds; a plain
        // ACK changes neither, so the stream stays synced (and its next push looks only at
        // what changed, rather than walking the whole subscription on every ACK).
        if first
            || req.error_detail.is_some()
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty()
        {
            st.synced = None;
        }
        if first {
            st.wildcard = req.resource_names_subscribe.is_empty() && kind.is_wildcard();
            for (name, version) in &req.initial_resource_versions {
                // Versions are our content hashes; anything else cannot match and is re-sent.
                let hash = u64::from_str_radix(version, 16).unwrap_or(u64::MAX);
                st.held.announce(name.clone(), hash);
            }
        }
        if !req.response_nonce.is_empty() && st.nonces.contains(&req.response_nonce) {
            let status = self.base.shared.cache.status(&node);
            match &req.error_detail {
                Some(err) => {
                    tracing::warn!(node = %node, %kind, version = %st.last_version,
                        error = %err.message, "delta NACK");
                    lock(&status).nack(kind, &st.last_version, &err.message);
                    self.base
                        .shared
                        .callbacks
                        .nack(&node, kind, &st.last_version, &err.message);
                    // The client refused them: it does not hold them.
                    for r in std::mem::take(&mut st.last_sent) {
                        st.held.remove(r.name());
                    }
                }
                None => {
                    if st.nonces.len() == 1 {
                        // The one response of the last push is accepted: nothing of it can
                        // be refused any more, so its list (100 pointers after a first EDS
                        // sync) is not kept for the stream's life.
                        st.last_sent = Vec::new();
                    }
                    lock(&status).ack(kind, &st.last_version);
                    let since = st.set_at.map(|t| t.elapsed()).unwrap_or_default();
                    self.base
                        .shared
                        .callbacks
                        .ack(&node, kind, &st.last_version, since);
                }
            }
        }
        let snap = self.base.current().map(|(s, _)| s);
        for n in &req.resource_names_subscribe {
            if n == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(intern(snap.as_deref(), kind, n));
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(n.as_str());
                if !st.wildcard {
                    st.held.remove(n);
                }
            }
        }
        if !req.resource_names_subscribe.is_empty() {
            st.names.trim();
        }
        self.respond(kind, Part::Both).await
    }

    /// On a snapshot change: every type's updates in dependency order, then removals in
    /// reverse order (what referenced a removed resource is updated before it goes).
    async fn push(&mut self) -> Result<(), Status> {
        for kind in ResourceType::ALL {
            self.respond(kind, Part::Updates).await?;
        }
        for kind in ResourceType::ALL.iter().rev() {
            self.respond(*kind, Part::Removals).await?;
        }
        Ok(())
    }

    async fn respond(&mut self, kind: ResourceType, part: Part) -> Result<(), Status> {
        let Some((snap, set_at)) = self.base.current() else {
            return Ok(());
        };
        let node = self.base.node.clone().unwrap_or_default();
        let Some(st) = self.types.get_mut(kind) else {
            return Ok(());
        };
        let ts = snap.of(kind);
        let synced = st.synced.as_ref().map(|s| s.of(kind));
        if synced.is_some_and(|s| s.version_hash() == ts.version_hash()) {
            return Ok(());
        }
        let version = ts.version();
        if self.base.shared.cache.is_parked(&node, kind, &version) {
            return Ok(());
        }
        // The client holds exactly what the synced version has for it, so only what changed
        // since can be sent or removed (computed once for all streams).
        let diff = synced.map(|old| self.base.shared.diffs.get(kind, old, ts));
        if part != Part::Updates {
            // After this call the client holds exactly what the type's version has for it.
            st.synced = Some(snap.clone());
        }
        let mut updates = Vec::new();
        if part != Part::Removals {
            let wanted: Box<dyn Iterator<Item = _>> = match &diff {
                Some(d) => Box::new(
                    d.changed
                        .iter()
                        .filter(|r| st.wildcard || st.names.contains(r.name())),
                ),
                None if st.wildcard => Box::new(ts.items().values()),
                None => Box::new(st.names.iter().filter_map(|n| ts.get(n))),
            };
            for r in wanted {
                if !st.held.holds(r) && self.base.may_receive(r) {
                    updates.push(r.clone());
                }
            }
        }
        let mut removed = Vec::new();
        if part != Part::Updates {
            removed = match &diff {
                Some(d) => d
                    .removed
                    .iter()
                    .filter(|n| st.held.contains(n))
                    .map(|n| n.to_string())
                    .collect(),
                None => st.held.gone(|n| ts.get(n).is_some()),
            };
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
        st.held.trim();
        st.last_version = version.clone();
        st.last_sent.clone_from(&updates);
        st.set_at = Some(set_at);
        st.nonces.clear();
        self.base.shared.callbacks.response(
            self.base.guard.id,
            &node,
            kind,
            &version,
            updates.len(),
        );
        // Very large pushes (a first sync of a huge mesh) go in chunks of about CHUNK_BYTES,
        // so no message nears a client's receive limit (gRPC's default is 4 MiB).
        let mut chunks: Vec<&[Arc<Resource>]> = Vec::new();
        let (mut from, mut size) = (0, 0);
        for (i, r) in updates.iter().enumerate() {
            let len = r.delta_entry().len();
            if size + len > CHUNK_BYTES && i > from {
                chunks.push(&updates[from..i]);
                (from, size) = (i, 0);
            }
            size += len;
        }
        chunks.push(&updates[from..]);
        let last = chunks.len() - 1;
        let mut removed = Some(removed);
        for (i, resources) in chunks.into_iter().enumerate() {
            let nonce = self.base.next_nonce();
            st.nonces.push(nonce.clone());
            let head = DeltaDiscoveryResponse {
                system_version_info: version.clone(),
                type_url: kind.type_url().to_owned(),
                removed_resources: if i == last {
                    removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                nonce,
                ..DeltaDiscoveryResponse::default()
            };
            self.base
                .send(Encoded::delta(&head, resources.iter().map(|r| &**r)))
                .await?;
        }
        Ok(())
    }
}

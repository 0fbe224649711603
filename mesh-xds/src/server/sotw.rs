//! A state-of-the-world discovery stream (ADS or one type's service).

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tonic::Status;

use super::cache::lock as lock_status;
use super::names::Names;
use super::resource::Resource;
use super::snapshot::Snapshot;
use super::stream::{intern, PerType, Protocol, StreamBase};
use super::wire::Encoded;
use crate::ResourceType;

/// What the stream last sent of one type, and what the client subscribes to.
#[derive(Default)]
struct TypeState {
    /// `None`: wildcard (everything of the type).
    names: Option<Names>,
    /// Version and resources of the last response (sorted by name): what the client holds.
    sent_version: Option<String>,
    sent: Vec<Arc<Resource>>,
    nonce: String,
    /// When the snapshot behind the last response was set (for convergence latency).
    set_at: Option<Instant>,
    /// The snapshot whose version of this type `sent` is exactly (for the subscribed names):
    /// a push then looks only at what changed since.
    synced: Option<Arc<Snapshot>>,
}

pub(crate) struct Sotw {
    base: StreamBase,
    types: PerType<TypeState>,
}

impl Sotw {
    pub(crate) fn new(base: StreamBase) -> Self {
        Self {
            base,
            types: PerType::default(),
        }
    }
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;

    fn base(&mut self) -> &mut StreamBase {
        &mut self.base
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), Status> {
        self.handle(req).await
    }

    async fn push_all(&mut self) -> Result<(), Status> {
        self.push().await
    }
}

impl Sotw {
    async fn handle(&mut self, req: DiscoveryRequest) -> Result<(), Status> {
        let Some((kind, node)) = self.base.begin(&req.type_url, req.node.as_ref())? else {
            return Ok(());
        };
        let first = !self.types.contains(kind);
        let current = self.base.current();
        let st = self.types.get_or_default(kind);
        if !req.response_nonce.is_empty() {
            if req.response_nonce != st.nonce {
                // An answer to an older response; the newer one's answer is still to come.
                return Ok(());
            }
            let status = self.base.shared.cache.status(&node);
            let version = st.sent_version.clone().unwrap_or_default();
            match &req.error_detail {
                Some(err) => {
                    tracing::warn!(node = %node, %kind, %version, error = %err.message, "NACK");
                    lock_status(&status).nack(kind, &version, &err.message);
                    // The client kept what it had before; which set that was is not known
                    // here, so nothing is assumed held (make-before-break keeps nothing).
                    st.sent.clear();
                    st.synced = None;
                    self.base
                        .shared
                        .callbacks
                        .nack(&node, kind, &version, &err.message);
                }
                None => {
                    lock_status(&status).ack(kind, &req.version_info);
                    let since = st.set_at.map(|t| t.elapsed()).unwrap_or_default();
                    self.base
                        .shared
                        .callbacks
                        .ack(&node, kind, &req.version_info, since);
                }
            }
        }
        // Every ACK repeats the subscription (100 names for an Envoy's EDS): when it is the
        // one held, keep it, and what the client holds stays known (`synced`).
        if first || !same_subscription(st.names.as_ref(), &req.resource_names, kind) {
            st.synced = None;
            let snap = current.as_ref().map(|(s, _)| &**s);
            let names: Names = req
                .resource_names
                .iter()
                .map(|n| intern(snap, kind, n))
                .collect();
            st.names = if names.contains("*") || (names.is_empty() && kind.is_wildcard()) {
                None
            } else {
                Some(names)
            };
        }
        if first && !req.version_info.is_empty() {
            // A reconnecting client: it holds `version_info` (content-hash versions mean the
            // same thing on every replica and after a restart), so it is not sent again.
            if let Some((snap, _)) = current {
                let ts = snap.of(kind);
                if ts.version() == req.version_info {
                    st.sent_version = Some(req.version_info.clone());
                    st.sent = included(ts.items(), st.names.as_ref());
                }
            }
        }
        self.respond(kind, false).await
    }

    /// Sends every type whose content changed, in dependency order; full-state types that
    /// lose resources first get the union of old and new (make before break), and the final
    /// set after everything that referenced the removed resources was updated.
    async fn push(&mut self) -> Result<(), Status> {
        let mut deferred = Vec::new();
        for kind in ResourceType::ALL {
            if !self.types.contains(kind) {
                continue;
            }
            self.respond(kind, true).await?;
            if self.types.get(kind).is_some_and(|s| s.set_at.is_none()) {
                deferred.push(kind);
            }
        }
        for kind in deferred {
            self.respond(kind, false).await?;
        }
        Ok(())
    }

    /// Sends `kind` if the client lacks what the snapshot holds for it. With `keep_removed`,
    /// a full-state type keeps resources the client holds but the snapshot dropped (and is
    /// marked for a final send by clearing `set_at`).
    async fn respond(&mut self, kind: ResourceType, keep_removed: bool) -> Result<(), Status> {
        let Some((snap, set_at)) = self.base.current() else {
            return Ok(());
        };
        let node = self.base.node.clone().unwrap_or_default();
        let Some(st) = self.types.get_mut(kind) else {
            return Ok(());
        };
        let ts = snap.of(kind);
        if !kind.is_wildcard() {
            if let Some(old) = st.synced.clone() {
                return self.respond_changes(kind, &old, snap, set_at).await;
            }
        }
        let mut version = ts.version();
        let mut items = included(ts.items(), st.names.as_ref());
        if kind == ResourceType::Secret {
            items.retain(|r| self.base.may_receive(r));
        }
        if st.sent_version.as_deref() == Some(version.as_str()) && same_names(&st.sent, &items) {
            if !kind.is_wildcard() {
                st.synced = Some(snap);
            }
            return Ok(());
        }
        if self.base.shared.cache.is_parked(&node, kind, &version) {
            return Ok(());
        }
        if !kind.is_wildcard() && items.iter().all(|r| holds(&st.sent, r)) {
            // For EDS/RDS (and SDS, RTDS) absence means nothing, so a response that only
            // drops names tells the client nothing: skip it. The client forgot the names it
            // dropped, so a name it subscribes to again is sent again.
            st.sent = items;
            st.synced = Some(snap);
            return Ok(());
        }
        let mut keep = false;
        if keep_removed && kind.is_wildcard() {
            let removed: Vec<Arc<Resource>> = st
                .sent
                .iter()
                .filter(|r| ts.get(r.name()).is_none())
                .cloned()
                .collect();
            if !removed.is_empty() {
                items.extend(removed);
                items.sort_by(|a, b| a.name().cmp(b.name()));
                version.push_str("+kept");
                keep = true;
            }
        }
        st.nonce = self.base.next_nonce();
        let head = DiscoveryResponse {
            version_info: version.clone(),
            type_url: kind.type_url().to_owned(),
            nonce: st.nonce.clone(),
            ..DiscoveryResponse::default()
        };
        // LDS and CDS responses carry the whole set (what is absent is removed). EDS, RDS,
        // SDS and RTDS responses may carry only what changed: the xDS protocol groups those
        // like delta responses, and a client keeps the resources a response does not name
        // (Envoy's and gRPC's SotW clients update only the watches named in a response). A
        // one-endpoint change then costs one assignment per subscriber, not all of them.
        let send: Vec<&Resource> = items
            .iter()
            .filter(|r| kind.is_wildcard() || !holds(&st.sent, r))
            .map(|r| &**r)
            .collect();
        let msg = Encoded::sotw(&head, send.iter().copied());
        let n = send.len();
        st.sent_version = Some(version.clone());
        st.set_at = if keep { None } else { Some(set_at) };
        st.sent = items;
        st.synced = if keep || kind.is_wildcard() {
            None
        } else {
            Some(snap.clone())
        };
        self.base
            .shared
            .callbacks
            .response(self.base.guard.id, &node, kind, &version, n);
        self.base.send(msg).await
    }
}

impl Sotw {
    /// [`Sotw::respond`] for an EDS/RDS/SDS/RTDS type whose `sent` is exactly what `old`
    /// had for the client: only the resources that changed since are looked at (the diff is
    /// computed once for all streams), and sent if subscribed.
    async fn respond_changes(
        &mut self,
        kind: ResourceType,
        old: &Snapshot,
        snap: Arc<Snapshot>,
        set_at: Instant,
    ) -> Result<(), Status> {
        let ts = snap.of(kind);
        if old.of(kind).version_hash() == ts.version_hash() {
            return Ok(());
        }
        let node = self.base.node.clone().unwrap_or_default();
        let version = ts.version();
        if self.base.shared.cache.is_parked(&node, kind, &version) {
            return Ok(());
        }
        let diff = self.base.shared.diffs.get(kind, old.of(kind), ts);
        let Some(st) = self.types.get_mut(kind) else {
            return Ok(());
        };
        let wanted = |n: &str| st.names.as_ref().is_none_or(|names| names.contains(n));
        let send: Vec<Arc<Resource>> = diff
            .changed
            .iter()
            .filter(|r| wanted(r.name()) && !holds(&st.sent, r))
            .cloned()
            .collect();
        // What the client holds now: `sent` with the changes applied.
        for r in &send {
            match st.sent.binary_search_by(|s| s.name().cmp(r.name())) {
                Ok(i) => st.sent[i] = r.clone(),
                Err(i) => st.sent.insert(i, r.clone()),
            }
        }
        for n in &diff.removed {
            if let Ok(i) = st.sent.binary_search_by(|s| s.name().cmp(n)) {
                st.sent.remove(i);
            }
        }
        st.synced = Some(snap.clone());
        if send.is_empty() {
            // Only removals: absence means nothing for these types (see `respond`).
            return Ok(());
        }
        st.nonce = self.base.next_nonce();
        let head = DiscoveryResponse {
            version_info: version.clone(),
            type_url: kind.type_url().to_owned(),
            nonce: st.nonce.clone(),
            ..DiscoveryResponse::default()
        };
        let msg = Encoded::sotw(&head, send.iter().map(|r| &**r));
        st.sent_version = Some(version.clone());
        st.set_at = Some(set_at);
        self.base
            .shared
            .callbacks
            .response(self.base.guard.id, &node, kind, &version, send.len());
        self.base.send(msg).await
    }
}

/// Whether a request's `names` subscribe to exactly `held` (`None`: wildcard).
fn same_subscription(held: Option<&Names>, names: &[String], kind: ResourceType) -> bool {
    let wildcard = names.iter().any(|n| n == "*") || (names.is_empty() && kind.is_wildcard());
    match held {
        None => wildcard,
        // Duplicates in `names` make the lengths differ: then it is rebuilt, which is correct.
        Some(held) => {
            !wildcard
                && held.len() == names.len()
                && names.iter().all(|n| held.contains(n.as_str()))
        }
    }
}

/// The resources of a type a subscription includes, sorted by name.
fn included(
    items: &std::collections::BTreeMap<String, Arc<Resource>>,
    names: Option<&Names>,
) -> Vec<Arc<Resource>> {
    match names {
        None => items.values().cloned().collect(),
        Some(names) => names.iter().filter_map(|n| items.get(n).cloned()).collect(),
    }
}

/// Whether `a` and `b` (both sorted by name) hold the same resources.
fn same_names(a: &[Arc<Resource>], b: &[Arc<Resource>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
}

/// Whether `sent` (sorted by name) holds `r` with the same content.
fn holds(sent: &[Arc<Resource>], r: &Resource) -> bool {
    sent.binary_search_by(|s| s.name().cmp(r.name()))
        .is_ok_and(|i| same(&sent[i], r))
}

fn same(a: &Resource, b: &Resource) -> bool {
    a.hash() == b.hash() && a.name() == b.name()
}

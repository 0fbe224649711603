//! The ADS protocol state machine, without I/O: it takes a response and says which requests to
//! send, applying accepted updates to the [`Store`] (and so to the sinks) on the way.
//!
//! What it keeps per type is what Envoy's `GrpcMuxImpl` keeps: the accepted version, the last
//! nonce, the subscribed names (LDS and CDS are wildcard; RDS and EDS follow the listeners and
//! clusters), per-resource versions for delta, and the last rejected version so that a control
//! plane resending a bad config does not make the client re-apply it in a tight loop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use mesh_core::{Cluster, ClusterLoadAssignment, Listener, RouteConfiguration, Secret};

use super::stats::{TypeStatus, XdsStatus};
use super::store::{Store, StoredResource};
use super::{subscribed_type, AdsMode, ResourceType};
use crate::convert::{decode_checked, ConvertError};

/// gRPC `INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// A request the driver should send.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// A state-of-the-world request.
    Sotw(DiscoveryRequest),
    /// An incremental request.
    Delta(DeltaDiscoveryRequest),
}

/// A request to send, and whether to hold it back first.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The request.
    pub request: Outbound,
    /// The NACK of a version rejected before: the driver sends it after a backoff, so that a
    /// control plane that resends at once cannot drive a tight NACK loop.
    pub hold: bool,
}

impl Outgoing {
    pub(crate) fn now(request: Outbound) -> Self {
        Self {
            request,
            hold: false,
        }
    }
}

/// What was last rejected for a type, by a key identifying the response's content (the SotW
/// version, or the delta resources' names and versions).
#[derive(Debug, Clone)]
pub(crate) struct Rejected {
    pub(crate) key: String,
    pub(crate) error: Status,
}

/// Protocol state of one resource type.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// SotW: the last accepted `version_info`.
    pub(crate) version: String,
    /// The nonce of the last response.
    pub(crate) nonce: String,
    /// Subscribed names (RDS and EDS; LDS and CDS are wildcard).
    pub(crate) names: BTreeSet<String>,
    /// Delta: the version of each resource held.
    pub(crate) resource_versions: BTreeMap<String, String>,
    pub(crate) rejected: Option<Rejected>,
    /// Whether a response was accepted (or a persisted config loaded).
    pub(crate) received: bool,
    pub(crate) stats: TypeStatus,
    /// Per held resource: the version it last changed with, and when (the config dump's).
    pub(crate) versions: super::ResourceVersions,
}

/// The ADS state machine for one client, across streams.
pub struct AdsState {
    pub(crate) mode: AdsMode,
    pub(crate) node: Node,
    /// Indexed by [`ResourceType::index`] (the two types the client does not subscribe to stay
    /// unused).
    pub(crate) types: [TypeState; ResourceType::ALL.len()],
    pub(crate) store: Store,
    /// Set when an update was accepted, until the driver persisted it.
    pub(crate) dirty: bool,
    /// The periodic re-request's period, and when the next one is due (see `refresh.rs`).
    pub(crate) refresh_every: Option<std::time::Duration>,
    pub(crate) refresh_at: Option<tokio::time::Instant>,
    pub(crate) refreshes: u64,
}

impl AdsState {
    /// A state machine for `node`, feeding `store`.
    pub(crate) fn new(mode: AdsMode, node: Node, store: Store) -> Self {
        let mut state = Self {
            mode,
            node,
            types: Default::default(),
            store,
            dirty: false,
            refresh_every: None,
            refresh_at: None,
            refreshes: 0,
        };
        state.types[ResourceType::Route.index()].names = state.store.config.wanted_routes();
        state.types[ResourceType::Endpoint.index()].names = state.store.config.wanted_endpoints();
        state.types[ResourceType::Secret.index()].names = state.store.config.wanted_secrets();
        state
    }

    pub(crate) fn ty(&self, ty: ResourceType) -> &TypeState {
        &self.types[ty.index()]
    }

    fn ty_mut(&mut self, ty: ResourceType) -> &mut TypeState {
        &mut self.types[ty.index()]
    }

    /// Whether the first full config has arrived: LDS and CDS accepted, and every route table
    /// and endpoint set they reference present.
    pub fn is_ready(&self) -> bool {
        self.ty(ResourceType::Listener).received
            && self.ty(ResourceType::Cluster).received
            && self.store.config.is_complete()
    }

    /// The requests opening a new stream: every subscription, with the versions held (SotW
    /// `version_info`, delta `initial_resource_versions`), in Envoy's order (CDS, EDS, LDS, RDS).
    /// Starts the refresh period over.
    pub fn on_connect(&mut self) -> Vec<Outgoing> {
        self.schedule_refresh();
        self.subscribe_all()
    }

    /// Every subscription as the first requests of a new stream.
    pub(crate) fn subscribe_all(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for ty in ResourceType::CLIENT {
            let ts = self.ty_mut(ty);
            ts.nonce.clear();
            ts.rejected = None;
            if !ty.is_wildcard() && ts.names.is_empty() {
                continue;
            }
            let request = match self.mode {
                AdsMode::Sotw => Outbound::Sotw(self.sotw_request(ty, None)),
                AdsMode::Delta => {
                    let ts = self.ty(ty);
                    Outbound::Delta(DeltaDiscoveryRequest {
                        node: Some(self.node.clone()),
                        type_url: ty.type_url().to_string(),
                        resource_names_subscribe: ts.names.iter().cloned().collect(),
                        initial_resource_versions: ts
                            .resource_versions
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        ..Default::default()
                    })
                }
            };
            out.push(Outgoing::now(request));
        }
        out
    }

    /// SotW's re-request: every subscription with an empty version, so the control plane
    /// answers with its full current state even if a push was lost.
    pub(crate) fn sotw_refresh(&self) -> Vec<Outgoing> {
        ResourceType::CLIENT
            .into_iter()
            .filter(|ty| ty.is_wildcard() || !self.ty(*ty).names.is_empty())
            .map(|ty| {
                let mut req = self.sotw_request(ty, None);
                req.version_info.clear();
                Outgoing::now(Outbound::Sotw(req))
            })
            .collect()
    }

    /// Handles a SotW response: validates and applies it (ACK), or keeps the previous config
    /// (NACK with `error_detail`); then follows the resource chain (LDS → RDS, CDS → EDS).
    pub fn on_response(&mut self, resp: DiscoveryResponse) -> Vec<Outgoing> {
        let Some(ty) = subscribed_type(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring a response of an unknown type");
            return Vec::new();
        };
        self.ty_mut(ty).nonce = resp.nonce.clone();
        if let Some(rej) = &self.ty(ty).rejected {
            if rej.key == resp.version_info {
                // The same rejected version again: no re-apply, and the NACK is held back.
                let error = rej.error.clone();
                self.ty_mut(ty).stats.nacks += 1;
                return vec![Outgoing {
                    request: Outbound::Sotw(self.sotw_request(ty, Some(error))),
                    hold: true,
                }];
            }
        }
        let applied = match ty {
            ResourceType::Listener => self.sotw_apply::<Listener>(&resp),
            ResourceType::Route => self.sotw_apply::<RouteConfiguration>(&resp),
            ResourceType::Cluster => self.sotw_apply::<Cluster>(&resp),
            ResourceType::Endpoint => self.sotw_apply::<ClusterLoadAssignment>(&resp),
            ResourceType::Secret => self.sotw_apply::<Secret>(&resp),
            // Not subscribed to (`subscribed_type` returns none of these).
            ResourceType::Runtime => Ok(()),
        };
        match applied {
            Ok(()) => {
                self.accepted(ty);
                self.ty_mut(ty).version = resp.version_info;
                let mut out = vec![Outgoing::now(Outbound::Sotw(self.sotw_request(ty, None)))];
                out.extend(self.follow_chain(ty));
                out
            }
            Err(error) => {
                self.rejected(ty, resp.version_info, &error);
                vec![Outgoing::now(Outbound::Sotw(
                    self.sotw_request(ty, Some(error)),
                ))]
            }
        }
    }

    fn sotw_apply<T: StoredResource>(&mut self, resp: &DiscoveryResponse) -> Result<(), Status> {
        let mut got = BTreeMap::new();
        let mut errors = Vec::new();
        for any in &resp.resources {
            match decode_checked::<T>(any) {
                Ok(r) => {
                    let name = r.resource_name().to_string();
                    if got.insert(name.clone(), Arc::new(r)).is_some() {
                        errors.push(ConvertError::new(
                            format!("{}[{name}]", T::KIND),
                            "listed twice in one response",
                        ));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(nack_status(&errors));
        }
        let next = if T::TYPE.is_wildcard() {
            got
        } else {
            // RDS/EDS: only what is subscribed; a subscribed name absent from the response keeps
            // what it had (Envoy's behaviour for non-wildcard types).
            let names = &self.ty(T::TYPE).names;
            got.retain(|k, _| names.contains(k));
            // The entries the response does not replace are shared, not copied.
            for (k, v) in T::map(&self.store.config) {
                if !got.contains_key(k) {
                    got.insert(k.clone(), Arc::clone(v));
                }
            }
            got
        };
        let version = &resp.version_info;
        self.apply_recording(next, &|_| version.clone())
            .map_err(|e| status(e.to_string()))
    }

    /// The SotW request of `ty` as of now: an ACK (no error) or a NACK.
    pub(crate) fn sotw_request(&self, ty: ResourceType, error: Option<Status>) -> DiscoveryRequest {
        let ts = self.ty(ty);
        DiscoveryRequest {
            version_info: ts.version.clone(),
            node: Some(self.node.clone()),
            resource_names: ts.names.iter().cloned().collect(),
            type_url: ty.type_url().to_string(),
            response_nonce: ts.nonce.clone(),
            error_detail: error,
            ..Default::default()
        }
    }

    pub(crate) fn accepted(&mut self, ty: ResourceType) {
        self.dirty = true;
        let ts = self.ty_mut(ty);
        ts.rejected = None;
        ts.received = true;
        ts.stats.acks += 1;
        ts.stats.last_update = Some(SystemTime::now());
        ts.stats.last_error = None;
    }

    pub(crate) fn rejected(&mut self, ty: ResourceType, key: String, error: &Status) {
        tracing::warn!(type_url = ty.type_url(), error = %error.message, "rejecting xDS update");
        let ts = self.ty_mut(ty);
        ts.stats.nacks += 1;
        ts.stats.last_error = Some(error.message.clone());
        ts.rejected = Some(Rejected {
            key,
            error: error.clone(),
        });
    }

    /// After LDS or CDS changed: updates the RDS or EDS subscription, dropping what is no longer
    /// referenced (a cluster removed from CDS drops its endpoints).
    /// Both also update the SDS subscription (the secrets their TLS settings name).
    pub(crate) fn follow_chain(&mut self, ty: ResourceType) -> Vec<Outgoing> {
        let (child, wanted) = match ty {
            ResourceType::Listener => (ResourceType::Route, self.store.config.wanted_routes()),
            ResourceType::Cluster => (ResourceType::Endpoint, self.store.config.wanted_endpoints()),
            _ => return Vec::new(),
        };
        let secrets = self.store.config.wanted_secrets();
        let mut out = self.follow(child, wanted);
        out.extend(self.follow(ResourceType::Secret, secrets));
        out
    }

    /// Subscribes `child` to exactly `wanted`, pruning what is no longer wanted.
    fn follow(
        &mut self,
        child: ResourceType,
        wanted: std::collections::BTreeSet<String>,
    ) -> Vec<Outgoing> {
        let ts = self.ty_mut(child);
        if ts.names == wanted {
            return Vec::new();
        }
        let added: Vec<String> = wanted.difference(&ts.names).cloned().collect();
        let removed: Vec<String> = ts.names.difference(&wanted).cloned().collect();
        for name in &removed {
            ts.resource_versions.remove(name);
        }
        ts.names = wanted;
        let pruned = match child {
            ResourceType::Route => self.prune::<RouteConfiguration>(),
            ResourceType::Secret => self.prune::<Secret>(),
            _ => self.prune::<ClusterLoadAssignment>(),
        };
        if let Err(e) = pruned {
            tracing::warn!(error = %e, "a sink refused the removal of unreferenced resources");
        }
        let request = match self.mode {
            AdsMode::Sotw => Outbound::Sotw(self.sotw_request(child, None)),
            AdsMode::Delta => Outbound::Delta(DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: child.type_url().to_string(),
                resource_names_subscribe: added,
                resource_names_unsubscribe: removed,
                ..Default::default()
            }),
        };
        vec![Outgoing::now(request)]
    }

    fn prune<T: StoredResource>(&mut self) -> Result<(), mesh_core::ReloadError> {
        let names = &self.ty(T::TYPE).names;
        let mut next = T::map(&self.store.config).clone();
        next.retain(|k, _| names.contains(k));
        // Only removals: nothing gets a new version.
        self.apply_recording(next, &|_| String::new())
    }

    /// Everything accepted so far.
    pub fn config(&self) -> &super::XdsConfig {
        &self.store.config
    }

    /// The status snapshot (versions, counters); the connection part is the driver's.
    pub fn status(&self) -> XdsStatus {
        let mut s = XdsStatus {
            ready: self.is_ready(),
            refreshes: self.refreshes,
            ..XdsStatus::default()
        };
        for ty in ResourceType::CLIENT {
            let ts = self.ty(ty);
            let mut t = ts.stats.clone();
            t.resource_versions = ts.versions.clone();
            t.version = match self.mode {
                AdsMode::Sotw => ts.version.clone(),
                AdsMode::Delta => ts.stats.version.clone(),
            };
            t.resources = match ty {
                ResourceType::Listener => self.store.config.listeners.len(),
                ResourceType::Route => self.store.config.routes.len(),
                ResourceType::Cluster => self.store.config.clusters.len(),
                ResourceType::Endpoint => self.store.config.endpoints.len(),
                ResourceType::Secret => self.store.config.secrets.len(),
                ResourceType::Runtime => 0,
            };
            s.types.insert(ty.type_url().to_string(), t);
        }
        s
    }
}

/// A NACK's `error_detail` naming every refused resource (the first few) and why.
pub(crate) fn nack_status(errors: &[ConvertError]) -> Status {
    const SHOWN: usize = 5;
    let mut msg: Vec<String> = errors.iter().take(SHOWN).map(ToString::to_string).collect();
    if errors.len() > SHOWN {
        msg.push(format!("and {} more", errors.len() - SHOWN));
    }
    status(msg.join("; "))
}

pub(crate) fn status(message: String) -> Status {
    Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

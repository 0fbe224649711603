//! `ClusterManager`: the clusters by name, fed by CDS and EDS through `Reload`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use mesh_core::{
    Checked, Cluster, ClusterLoadAssignment, Discovery, Locality, Reload, ReloadError, Shared,
    Validate,
};

use crate::cluster::ClusterState;
use crate::tls::{ClusterTls, TlsSecrets};

/// foldhash: the data path hashes the cluster name once per request.
type ClusterMap = HashMap<Arc<str>, Arc<ClusterState>, foldhash::fast::RandomState>;

/// The clusters at run time. Cheap to clone (a handle); every clone sees the same clusters.
///
/// - `Reload<Vec<Cluster>>` (CDS) replaces the whole set of clusters. A cluster whose config
///   did not change is kept as is; a changed one is rebuilt but keeps its endpoints' state.
/// - `Reload<ClusterLoadAssignment>` (EDS) replaces one cluster's endpoints (matched by
///   [`Cluster::eds_name`]); an assignment that arrives before its cluster is kept for it.
/// - [`RemoveLoadAssignment`] (or [`ClusterManager::remove_load_assignment`]) empties it.
///
/// Static clusters take their endpoints from `Cluster.load_assignment`.
#[derive(Clone, Default)]
pub struct ClusterManager {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    clusters: Shared<ClusterMap>,
    /// The last EDS assignment per EDS name; serialises reloads (config path only).
    eds: Mutex<HashMap<String, Arc<ClusterLoadAssignment>>>,
    local: Option<Locality>,
    /// Where clusters with `tls` find their certificates and bundles.
    secrets: Option<Arc<dyn TlsSecrets>>,
}

impl std::fmt::Debug for ClusterManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clusters = self.inner.clusters.load();
        let mut names: Vec<&str> = clusters.keys().map(|k| &**k).collect();
        names.sort_unstable();
        f.debug_struct("ClusterManager")
            .field("clusters", &names)
            .finish()
    }
}

/// Removal of one EDS resource (by cluster / EDS service name): its cluster has no endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveLoadAssignment(pub String);

impl ClusterManager {
    /// No clusters yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// No clusters yet; endpoints in `local` (this process's own locality) are preferred while
    /// that locality is healthy, spilling over to the others as it degrades.
    pub fn with_local_locality(local: Locality) -> Self {
        Self {
            inner: Arc::new(Inner {
                local: Some(local),
                ..Inner::default()
            }),
        }
    }

    /// This manager, its clusters with `tls` taking their certificates and trust bundles from
    /// `secrets` (at each new connection's handshake). Call it before the first reload: a
    /// handle already shared keeps no secrets (and clusters with `tls` are refused).
    #[must_use]
    pub fn with_secrets(mut self, secrets: Arc<dyn TlsSecrets>) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.secrets = Some(secrets),
            None => tracing::warn!("ClusterManager::with_secrets on a shared handle: ignored"),
        }
        self
    }

    /// The cluster named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ClusterState>> {
        self.inner.clusters.load().get(name).cloned()
    }

    /// The names of all clusters, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .clusters
            .load()
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort_unstable();
        v
    }

    /// Empties the endpoint set published under `eds_name` (an EDS resource removal).
    pub fn remove_load_assignment(&self, eds_name: &str) {
        let mut eds = self.lock_eds();
        eds.remove(eds_name);
        for c in self.inner.clusters.load().values() {
            if c.config().discovery == Discovery::Eds && c.config().eds_name() == eds_name {
                c.update_assignment(Arc::new(ClusterLoadAssignment {
                    cluster_name: eds_name.to_string(),
                    ..ClusterLoadAssignment::default()
                }));
            }
        }
    }

    fn lock_eds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ClusterLoadAssignment>>> {
        // Values are replaced whole under the lock, so a poisoned lock is still consistent.
        self.inner.eds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reload<Vec<Cluster>> for ClusterManager {
    fn reload(&self, update: Vec<Cluster>) -> Result<(), ReloadError> {
        let mut seen = HashSet::with_capacity(update.len());
        for c in &update {
            c.validate()
                .map_err(|e| ReloadError::invalid("cluster", &c.name, e))?;
            if !seen.insert(c.name.as_str()) {
                return Err(ReloadError::new("cluster", &c.name, "listed twice"));
            }
        }
        // Clusters with TLS get their client config first: a bad one refuses the whole update.
        let mut tls = Vec::with_capacity(update.len());
        for c in &update {
            tls.push(match &c.tls {
                None => None,
                Some(t) => {
                    let secrets = self.inner.secrets.clone().ok_or_else(|| {
                        ReloadError::new(
                            "cluster",
                            &c.name,
                            "tls: this process has no secret store",
                        )
                    })?;
                    Some(
                        ClusterTls::new(t, secrets).map_err(|e| {
                            ReloadError::new("cluster", &c.name, format!("tls: {e}"))
                        })?,
                    )
                }
            });
        }
        let eds = self.lock_eds();
        let old = self.inner.clusters.load_full();
        let mut next = ClusterMap::with_capacity_and_hasher(update.len(), Default::default());
        for (c, tls) in update.into_iter().zip(tls) {
            let prev = old.get(c.name.as_str());
            if let Some(p) = prev.filter(|p| *p.config() == c) {
                next.insert(p.shared_name().clone(), p.clone());
                continue;
            }
            let assignment = match c.discovery {
                Discovery::Static => Arc::new(c.load_assignment.clone().unwrap_or_default()),
                Discovery::Eds => eds.get(c.eds_name()).cloned().unwrap_or_default(),
            };
            let carried = prev.map(|p| p.endpoints());
            let state = ClusterState::new(c, self.inner.local.clone(), carried, assignment, tls);
            next.insert(state.shared_name().clone(), state);
        }
        self.inner.clusters.store(next);
        Ok(())
    }
}

/// An endpoint set from any caller: validated, then applied.
impl Reload<ClusterLoadAssignment> for ClusterManager {
    fn reload(&self, update: ClusterLoadAssignment) -> Result<(), ReloadError> {
        let name = update.cluster_name.clone();
        let checked = Checked::new(update)
            .map_err(|e| ReloadError::invalid("cluster_load_assignment", &name, e))?;
        self.reload(checked)
    }
}

/// An endpoint set already validated (what the xDS client's conversion hands over): applied
/// without checking 10,000s of endpoints a second time.
impl Reload<Checked<ClusterLoadAssignment>> for ClusterManager {
    fn reload(&self, update: Checked<ClusterLoadAssignment>) -> Result<(), ReloadError> {
        let update = update.into_inner();
        let mut eds = self.lock_eds();
        // One shared copy for the cluster(s) and the pending map: no clone of 10,000s of
        // endpoints per update.
        let update = Arc::new(update);
        for c in self.inner.clusters.load().values() {
            let config = c.config();
            if config.discovery == Discovery::Eds && config.eds_name() == update.cluster_name {
                c.update_assignment(update.clone());
            }
        }
        eds.insert(update.cluster_name.clone(), update);
        Ok(())
    }
}

/// Removal, as the xDS client's per-resource sinks are told of it: empties the endpoint set of
/// the removed assignment's cluster (`RemoveLoadAssignment`).
impl mesh_core::ReloadEach<mesh_core::ClusterLoadAssignment> for ClusterManager {
    fn remove(&self, name: &str) -> Result<(), ReloadError> {
        self.reload(RemoveLoadAssignment(name.to_owned()))
    }
}

/// Removal for the checked feed, as for the plain one.
impl mesh_core::ReloadEach<Checked<ClusterLoadAssignment>> for ClusterManager {
    fn remove(&self, name: &str) -> Result<(), ReloadError> {
        self.reload(RemoveLoadAssignment(name.to_owned()))
    }
}

impl Reload<RemoveLoadAssignment> for ClusterManager {
    fn reload(&self, update: RemoveLoadAssignment) -> Result<(), ReloadError> {
        self.remove_load_assignment(&update.0);
        Ok(())
    }
}

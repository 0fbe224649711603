//! `SnapshotCache`: the snapshot of every node (group), watches that wake streams when it
//! changes, and what each node has ACKed or NACKed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::watch;

use super::resource::ResourceStore;
use super::snapshot::{Snapshot, SnapshotError};
use super::status::{NodeStatus, StatusDump};
use crate::ResourceType;

/// Maps a node to the key its snapshot is stored under.
pub type NodeHash = Arc<dyn Fn(&Node) -> String + Send + Sync>;

/// Checks a snapshot the way clients will (e.g. by converting it to mesh-core types and running
/// `mesh_core::Validate`), so config a client would NACK is refused before it is served.
pub type Validator = Arc<dyn Fn(&Snapshot) -> Result<(), SnapshotError> + Send + Sync>;

/// A snapshot [`SnapshotCache::check`] passed, to be set without checking it again.
#[derive(Debug, Clone)]
pub struct CheckedSnapshot(Snapshot);

impl CheckedSnapshot {
    /// The snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.0
    }
}

/// What a stream watches: the node's current snapshot and when it was set.
#[derive(Debug, Clone)]
pub struct Current {
    /// The snapshot (`None` until one is set for the node and no fallback is set).
    pub snapshot: Option<Arc<Snapshot>>,
    /// When it was set (to measure convergence).
    pub set_at: Instant,
}

struct NodeEntry {
    tx: watch::Sender<Current>,
    /// Whether this entry holds its own snapshot (else it follows the fallback).
    own: bool,
    status: Arc<Mutex<NodeStatus>>,
}

struct Inner {
    node_hash: NodeHash,
    validator: RwLock<Option<Validator>>,
    store: Mutex<ResourceStore>,
    nodes: RwLock<HashMap<String, NodeEntry>>,
    fallback: RwLock<Option<Arc<Snapshot>>>,
}

/// Snapshots keyed by node hash, shared by every discovery stream.
///
/// Setting a snapshot checks its consistency and runs the validator; a refused snapshot leaves
/// the previous one serving. Resources are interned by content hash across all snapshots.
///
/// ```
/// use mesh_xds::server::{Snapshot, SnapshotCache};
///
/// let cache = SnapshotCache::new();
/// cache.set_snapshot("node-1", Snapshot::default()).unwrap();
/// assert!(cache.snapshot("node-1").is_some());
/// ```
#[derive(Clone)]
pub struct SnapshotCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotCache")
            .field("nodes", &self.node_keys())
            .finish_non_exhaustive()
    }
}

impl Default for SnapshotCache {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotCache {
    /// A cache keyed by node id.
    pub fn new() -> Self {
        Self::with_node_hash(Arc::new(|n: &Node| n.id.clone()))
    }

    /// A cache keyed by `hash(node)`, e.g. the node's cluster, so a group of nodes shares one
    /// snapshot.
    pub fn with_node_hash(hash: NodeHash) -> Self {
        Self {
            inner: Arc::new(Inner {
                node_hash: hash,
                validator: RwLock::new(None),
                store: Mutex::new(ResourceStore::default()),
                nodes: RwLock::new(HashMap::new()),
                fallback: RwLock::new(None),
            }),
        }
    }

    /// Sets the validator run on every snapshot before it is accepted (replacing any).
    pub fn set_validator(&self, validator: Validator) {
        *write(&self.inner.validator) = Some(validator);
    }

    /// The key `node` is served under.
    pub fn node_key(&self, node: &Node) -> String {
        (self.inner.node_hash)(node)
    }

    /// Checks `snap` (consistency, then the validator) without setting it; what it returns is
    /// set by [`SnapshotCache::set_checked`] or [`SnapshotCache::set_fallback_checked`] without
    /// a second check (e.g. to check every node's snapshot before setting any).
    pub fn check(&self, snap: Snapshot) -> Result<CheckedSnapshot, SnapshotError> {
        snap.check_consistency()?;
        let validator = read(&self.inner.validator).clone();
        if let Some(v) = validator {
            v(&snap)?;
        }
        Ok(CheckedSnapshot(snap))
    }

    /// Sets the snapshot of `key`, waking its streams if any version changed. An inconsistent
    /// or invalid snapshot is refused and the previous one keeps serving.
    pub fn set_snapshot(&self, key: &str, snap: Snapshot) -> Result<(), SnapshotError> {
        let snap = self.check(snap)?;
        self.set_checked(key, snap);
        Ok(())
    }

    /// Sets the snapshot of `key` that [`SnapshotCache::check`] passed.
    pub fn set_checked(&self, key: &str, snap: CheckedSnapshot) {
        let snap = self.intern(snap.0);
        let mut nodes = write(&self.inner.nodes);
        let entry = nodes
            .entry(key.to_owned())
            .or_insert_with(|| new_entry(None));
        entry.own = true;
        publish(entry, Some(snap));
    }

    /// Sets the snapshot served to nodes that have none of their own (e.g. sidecars the source
    /// does not list); checked like any other.
    pub fn set_fallback(&self, snap: Snapshot) -> Result<(), SnapshotError> {
        let snap = self.check(snap)?;
        self.set_fallback_checked(snap);
        Ok(())
    }

    /// Sets the fallback snapshot that [`SnapshotCache::check`] passed.
    pub fn set_fallback_checked(&self, snap: CheckedSnapshot) {
        let snap = self.intern(snap.0);
        *write(&self.inner.fallback) = Some(snap.clone());
        for entry in write(&self.inner.nodes).values_mut() {
            if !entry.own {
                publish(entry, Some(snap.clone()));
            }
        }
    }

    /// Removes the snapshot of `key`; its streams fall back to the fallback snapshot if any.
    pub fn clear_snapshot(&self, key: &str) {
        let fallback = read(&self.inner.fallback).clone();
        if let Some(entry) = write(&self.inner.nodes).get_mut(key) {
            entry.own = false;
            publish(entry, fallback);
        }
    }

    /// The snapshot `key` is served now.
    pub fn snapshot(&self, key: &str) -> Option<Arc<Snapshot>> {
        match read(&self.inner.nodes).get(key) {
            Some(e) => e.tx.borrow().snapshot.clone(),
            None => read(&self.inner.fallback).clone(),
        }
    }

    /// The Envoy-shaped config dump of what `key` is served now (its own snapshot, else the
    /// fallback), or `None` when there is none.
    pub fn config_dump(&self, key: &str) -> Option<crate::config_dump::ConfigDump> {
        let snap = self.snapshot(key)?;
        let set_at = read(&self.inner.nodes)
            .get(key)
            .and_then(|e| lock(&e.status).set_at());
        Some(crate::config_dump::ConfigDump::from_snapshot(&snap, set_at))
    }

    /// Keys with a snapshot of their own, sorted.
    pub fn node_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = read(&self.inner.nodes)
            .iter()
            .filter(|(_, e)| e.own)
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// A receiver that sees `key`'s current snapshot and every change after.
    pub fn watch(&self, key: &str) -> watch::Receiver<Current> {
        if let Some(e) = read(&self.inner.nodes).get(key) {
            return e.tx.subscribe();
        }
        let fallback = read(&self.inner.fallback).clone();
        let mut nodes = write(&self.inner.nodes);
        nodes
            .entry(key.to_owned())
            .or_insert_with(|| new_entry(fallback))
            .tx
            .subscribe()
    }

    /// The ACK/NACK record of `key` (created on first use).
    pub(crate) fn status(&self, key: &str) -> Arc<Mutex<NodeStatus>> {
        if let Some(e) = read(&self.inner.nodes).get(key) {
            return e.status.clone();
        }
        let fallback = read(&self.inner.fallback).clone();
        write(&self.inner.nodes)
            .entry(key.to_owned())
            .or_insert_with(|| new_entry(fallback))
            .status
            .clone()
    }

    /// Whether `key` NACKed exactly this version of `kind` (then it is not sent again until
    /// the node's snapshot changes).
    pub fn is_parked(&self, key: &str, kind: ResourceType, version: &str) -> bool {
        lock(&self.status(key)).is_parked(kind, version)
    }

    /// Number of unique resources held across all snapshots.
    pub fn unique_resources(&self) -> usize {
        lock(&self.inner.store).live()
    }

    /// Per node: the versions set, and what the node has ACKed or NACKed and when.
    pub fn dump(&self) -> CacheDump {
        let nodes = read(&self.inner.nodes);
        let mut out: Vec<NodeDump> = nodes
            .iter()
            .map(|(key, e)| {
                let cur = e.tx.borrow().clone();
                NodeDump {
                    node: key.clone(),
                    own_snapshot: e.own,
                    set: cur.snapshot.as_ref().map(|s| {
                        ResourceType::ALL
                            .iter()
                            .filter(|t| !s.of(**t).items().is_empty())
                            .map(|t| TypeDump {
                                kind: *t,
                                version: s.of(*t).version(),
                                resources: s
                                    .of(*t)
                                    .items()
                                    .values()
                                    .map(|r| (r.name().to_owned(), r.version()))
                                    .collect(),
                            })
                            .collect()
                    }),
                    status: lock(&e.status).dump(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        CacheDump {
            unique_resources: lock(&self.inner.store).live(),
            nodes: out,
        }
    }

    fn intern(&self, mut snap: Snapshot) -> Arc<Snapshot> {
        let mut store = lock(&self.inner.store);
        snap.map_items(|r| store.intern(r));
        Arc::new(snap)
    }
}

fn new_entry(snapshot: Option<Arc<Snapshot>>) -> NodeEntry {
    let (tx, _) = watch::channel(Current {
        snapshot,
        set_at: Instant::now(),
    });
    NodeEntry {
        tx,
        own: false,
        status: Arc::new(Mutex::new(NodeStatus::default())),
    }
}

/// Replaces the entry's snapshot, waking watchers only when some version changed.
fn publish(entry: &mut NodeEntry, snap: Option<Arc<Snapshot>>) {
    let now = Instant::now();
    lock(&entry.status).snapshot_set(SystemTime::now());
    entry.tx.send_if_modified(|cur| {
        let same = match (&cur.snapshot, &snap) {
            (Some(a), Some(b)) => a.version() == b.version(),
            (None, None) => true,
            _ => false,
        };
        if !same {
            cur.snapshot = snap;
            cur.set_at = now;
        }
        !same
    });
}

/// What the admin endpoint shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheDump {
    /// Unique resources held (shared by all snapshots).
    pub unique_resources: usize,
    /// Per node key.
    pub nodes: Vec<NodeDump>,
}

/// One node's entry in a [`CacheDump`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeDump {
    /// The node key.
    pub node: String,
    /// Whether it has a snapshot of its own (else it is served the fallback).
    pub own_snapshot: bool,
    /// Per type: the version set and each resource's version.
    pub set: Option<Vec<TypeDump>>,
    /// What the node ACKed and NACKed.
    pub status: StatusDump,
}

/// One type in a [`NodeDump`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct TypeDump {
    /// The type.
    #[serde(rename = "type")]
    pub kind: ResourceType,
    /// The type's version.
    pub version: String,
    /// Resource name → version.
    pub resources: Vec<(String, String)>,
}

// Poisoning only follows a panic elsewhere; the data (maps of snapshots) stays usable, so
// recover rather than propagate the panic into every stream.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

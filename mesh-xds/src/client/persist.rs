//! Static stability beyond Envoy: the last accepted config, with the versions it came with, in a
//! local JSON file, so that a sidecar restarting while the control plane is down serves it at
//! once (and resubscribes with those versions when the control plane returns).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::AdsState;
use super::{AdsMode, ResourceType, XdsConfig};

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Persisted {
    pub(crate) mode: AdsMode,
    pub(crate) config: XdsConfig,
    /// SotW `version_info` per type URL.
    #[serde(default)]
    pub(crate) versions: BTreeMap<String, String>,
    /// Delta per-resource versions per type URL.
    #[serde(default)]
    pub(crate) resource_versions: BTreeMap<String, BTreeMap<String, String>>,
    /// Per type URL, each resource's version and last change (what the config dump shows).
    #[serde(default)]
    pub(crate) dump_versions: BTreeMap<String, super::ResourceVersions>,
}

impl Persisted {
    pub(crate) fn of(state: &AdsState) -> Self {
        let mut p = Self {
            mode: state.mode,
            config: state.store.config.clone(),
            ..Self::default()
        };
        for ty in ResourceType::CLIENT {
            let ts = state.ty(ty);
            let url = ty.type_url().to_string();
            p.versions.insert(url.clone(), ts.version.clone());
            p.dump_versions.insert(url.clone(), ts.versions.clone());
            p.resource_versions
                .insert(url, ts.resource_versions.clone());
        }
        p
    }

    /// Restores the versions into a state machine built over `self.config` (same mode only: a
    /// SotW version means nothing to a delta stream and the other way round).
    pub(crate) fn restore_versions(&self, state: &mut AdsState) {
        for ty in ResourceType::CLIENT {
            let ts = &mut state.types[ty.index()];
            ts.received = true;
            if let Some(v) = self.dump_versions.get(ty.type_url()) {
                ts.versions = v.clone();
            }
            if self.mode != state.mode {
                continue;
            }
            if let Some(v) = self.versions.get(ty.type_url()) {
                ts.version = v.clone();
            }
            if let Some(v) = self.resource_versions.get(ty.type_url()) {
                ts.resource_versions = v.clone();
            }
        }
    }
}

/// Reads a persisted config; a missing file is `Ok(None)`.
pub(crate) fn load(path: &Path) -> io::Result<Option<Persisted>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes atomically (temporary file, then rename), so a crash never leaves half a file.
pub(crate) fn store(path: &Path, p: &Persisted) -> io::Result<()> {
    let bytes = serde_json::to_vec(p).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

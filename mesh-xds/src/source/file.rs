//! The `mesh.yaml` file source: load, translate, apply all-or-nothing, and hot reload.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::incremental::TranslationCache;
use super::spec::MeshSpec;
use super::translate::Snapshots;
use crate::server::SnapshotCache;

/// Why a file was refused: the file, the line when known, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SourceError {
    /// The file (or source name, e.g. `etcd`).
    pub file: String,
    /// 1-based line.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

impl MeshSpec {
    /// Parses and translates `text` (read from `file`, named in errors).
    pub fn load_str(file: &str, text: &str) -> Result<(MeshSpec, Snapshots), SourceError> {
        Self::load_str_with(file, text, &mut TranslationCache::default())
    }

    /// [`MeshSpec::load_str`], re-translating only the services that differ from those
    /// `cache` holds (see [`MeshSpec::snapshots_with`]).
    pub fn load_str_with(
        file: &str,
        text: &str,
        cache: &mut TranslationCache,
    ) -> Result<(MeshSpec, Snapshots), SourceError> {
        let spec = MeshSpec::from_yaml(text).map_err(|e| SourceError {
            file: file.to_owned(),
            line: e.location().map(|l| l.line()),
            reason: e.to_string(),
        })?;
        let snaps = spec.snapshots_with(cache).map_err(|e| SourceError {
            file: file.to_owned(),
            line: e.name.as_deref().and_then(|n| line_of(text, n)),
            reason: e.to_string(),
        })?;
        Ok((spec, snaps))
    }
}

/// The line of the entry named `name` (`name: x`, `- name: x`, `id: x`, quoted or not).
fn line_of(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches("- ").trim();
            ["name:", "id:"].iter().any(|k| {
                l.strip_prefix(k)
                    .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\''))
                    == Some(name)
            })
        })
        .map(|i| i + 1)
}

/// Sets every snapshot, all or nothing: each is checked by the cache (once) before any is set,
/// so one refused node leaves every node on its last good snapshot. Nodes in `previous` but no longer listed
/// are cleared (they get the fallback). Returns the nodes now set.
pub fn apply(
    cache: &SnapshotCache,
    snaps: &Snapshots,
    previous: &BTreeSet<String>,
) -> Result<BTreeSet<String>, crate::server::SnapshotError> {
    let fallback = cache.check(snaps.fallback.clone())?;
    let nodes = snaps
        .nodes
        .iter()
        .map(|(id, s)| Ok((id, cache.check(s.clone())?)))
        .collect::<Result<Vec<_>, crate::server::SnapshotError>>()?;
    cache.set_fallback_checked(fallback);
    for (id, s) in nodes {
        cache.set_checked(id, s);
    }
    let now: BTreeSet<String> = snaps.nodes.keys().cloned().collect();
    for gone in previous.difference(&now) {
        cache.clear_snapshot(gone);
    }
    Ok(now)
}

/// What a [`FileSource`] keeps between reloads.
#[derive(Debug, Default)]
struct FileState {
    /// Hash of the content last tried.
    hash: u64,
    /// The nodes with snapshots of their own, set by the last good load.
    nodes: BTreeSet<String>,
    /// Services as last translated.
    translations: TranslationCache,
}

/// The outcome of the latest reload attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Successful loads so far.
    pub applied: u64,
    /// The last refusal, cleared by the next success.
    pub last_error: Option<SourceError>,
}

/// Serves a `mesh.yaml` into a cache and reloads it when its content changes; an edit
/// re-translates only the services it changed.
///
/// The file is polled (every 200 ms by default) rather than watched with inotify: polling sees
/// editors' write-to-temp-and-rename saves, files on network and container mounts, and a
/// symlink swap (Kubernetes ConfigMaps) alike, and its cost (one small read) is negligible.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    cache: SnapshotCache,
    state: Arc<Mutex<FileState>>,
    status: watch::Sender<ReloadStatus>,
}

impl FileSource {
    /// A source of `path` into `cache` (nothing is read yet).
    pub fn new(path: impl AsRef<Path>, cache: SnapshotCache) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            cache,
            state: Arc::default(),
            status: watch::channel(ReloadStatus::default()).0,
        }
    }

    /// Reads, translates and applies the file if its content changed since the last attempt.
    /// Returns whether something new was applied; a refused file keeps the last good snapshots.
    pub fn reload(&self) -> Result<bool, SourceError> {
        let file = self.path.display().to_string();
        let text = std::fs::read_to_string(&self.path).map_err(|e| SourceError {
            file: file.clone(),
            line: None,
            reason: e.to_string(),
        })?;
        let mut h = fnv::FnvHasher::default();
        h.write(text.as_bytes());
        let hash = h.finish();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        if state.hash == hash {
            return Ok(false);
        }
        state.hash = hash;
        let loaded = MeshSpec::load_str_with(&file, &text, &mut state.translations);
        let result = loaded.and_then(|(_, snaps)| {
            apply(&self.cache, &snaps, &state.nodes).map_err(|e| SourceError {
                file: file.clone(),
                line: None,
                reason: e.to_string(),
            })
        });
        match result {
            Ok(nodes) => {
                state.nodes = nodes;
                self.status.send_modify(|s| {
                    s.applied += 1;
                    s.last_error = None;
                });
                tracing::info!(file = %file, "mesh.yaml applied");
                Ok(true)
            }
            Err(e) => {
                tracing::error!(error = %e, "mesh.yaml refused; the last good config keeps serving");
                self.status.send_modify(|s| s.last_error = Some(e.clone()));
                Err(e)
            }
        }
    }

    /// Forgets the file's hash when a workload certificate is due for renewal, so the next
    /// [`FileSource::reload`] translates (and re-issues it).
    fn renew_if_due(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.translations.renewal_due() {
            tracing::info!("renewing workload certificates");
            state.hash = 0;
        }
    }

    /// Watches the outcome of reloads.
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.subscribe()
    }

    /// Loads the file once (returning its error if refused), then polls it every `interval` in
    /// a task until the returned handle is aborted.
    pub fn spawn(self, interval: Duration) -> Result<tokio::task::JoinHandle<()>, SourceError> {
        self.reload()?;
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // A workload certificate due for renewal: translate again (it is re-issued and
                // the nodes get a new snapshot version) even though the file did not change.
                self.renew_if_due();
                // Errors are logged and kept in `status`; the loop goes on.
                let _ = self.reload();
            }
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_found_by_entry_name() {
        let text = "services:\n  - name: a\n  - name: \"b\"\nnodes:\n  - id: n1\n";
        assert_eq!(line_of(text, "b"), Some(3));
        assert_eq!(line_of(text, "n1"), Some(5));
        assert_eq!(line_of(text, "zz"), None);
    }
}

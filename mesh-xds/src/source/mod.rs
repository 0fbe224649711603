//! Sources that produce snapshots: a `mesh.yaml` file (hot reloaded) and etcd.

mod etcd;
mod file;
mod incremental;
mod proxyless;
mod spec;
mod translate;

pub use etcd::{register, EtcdSource, EtcdStatus, Registration};
pub use file::{apply, FileSource, ReloadStatus, SourceError};
pub use incremental::TranslationCache;
pub use spec::{EndpointSpec, ListenerAddrs, MeshSpec, NodeSpec, PartialAddrs, ServiceSpec};
pub use translate::{Snapshots, TranslateError, INBOUND, LOCAL_APP, OUTBOUND};

//! Sources that produce snapshots: a `mesh.yaml` file (hot reloaded) and, with the `etcd`
//! feature, etcd.

#[cfg(feature = "etcd")]
mod etcd;
mod file;
mod hop;
mod incremental;
mod opaque;
mod proxyless;
mod spec;
mod translate;

#[cfg(feature = "etcd")]
pub use etcd::{register, EtcdSource, EtcdStatus};
pub use file::{apply, FileSource, ReloadStatus, SourceError};
pub use hop::{MeshProtocol, SIDECAR_METADATA};
pub use incremental::TranslationCache;
pub use mesh_core::Registration;
pub use opaque::OUTBOUND_TCP;
pub use spec::{
    EndpointSpec, ListenerAddrs, MeshSpec, NodeSpec, PartialAddrs, ServiceProtocol, ServiceSpec,
};
pub use translate::{Snapshots, TranslateError, INBOUND, LOCAL_APP, OUTBOUND};

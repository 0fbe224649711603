//! Sources that produce snapshots: a `mesh.yaml` file (hot reloaded) and, with the `etcd`
//! feature, etcd.

mod authz;
#[cfg(feature = "etcd")]
mod etcd;
mod file;
mod hop;
mod incremental;
mod opaque;
mod pki;
mod proxyless;
mod rpc;
mod spec;
mod translate;

pub use authz::{AllowRule, AuthzSpec};
#[cfg(feature = "etcd")]
pub use etcd::{register, EtcdSource, EtcdStatus};
pub use file::{apply, FileSource, ReloadStatus, SourceError};
pub use hop::{MeshProtocol, SIDECAR_METADATA};
pub use incremental::TranslationCache;
pub use mesh_core::Registration;
pub use opaque::OUTBOUND_TCP;
pub use pki::{CaError, MeshCa, ROOT_SECRET, WORKLOAD_SECRET};
pub use rpc::{OUTBOUND_BOLT, OUTBOUND_DUBBO};
pub use spec::{
    CaSpec, EndpointSpec, ListenerAddrs, MeshSpec, NodeSpec, PartialAddrs, SecuritySpec,
    ServiceProtocol, ServiceSpec,
};
pub use translate::{Snapshots, TranslateError, INBOUND, LOCAL_APP, OUTBOUND};

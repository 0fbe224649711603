//! mTLS on the sidecar's data path (rustls on ring): the [`SecretStore`] of certificates and
//! trust bundles (SDS or static config), TLS termination on listeners with `tls`
//! ([`InboundTls`]: client certificate required, its URI SAN inserted as
//! [`PeerIdentity`](mesh_core::extensions::PeerIdentity)), and the handshake-error counter.
//! Outbound mTLS lives in mesh-lb's connector (`mesh_lb::tls`), reading this same store.

mod inbound;
mod metrics;
mod store;

pub use inbound::InboundTls;
pub use store::SecretStore;

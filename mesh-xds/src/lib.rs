//! # mesh-xds
//!
//! xDS on the wire, with envoy-types protos over tonic. The client side is an ADS subscriber
//! (state-of-the-world and delta) that converts resources to mesh-core's model, validates them and
//! feeds the layers' `Reload` sinks, ACKing or NACKing each update. The server side is the control
//! plane: a per-node snapshot cache, the aggregated and per-type discovery services, and the
//! sources (a YAML file or etcd) that produce snapshots. Protobuf appears only in this crate, and
//! proto ↔ mesh-core conversion lives in one module, [`convert`].

pub mod client;
pub mod convert;
pub mod server;
pub mod source;
pub mod tls;

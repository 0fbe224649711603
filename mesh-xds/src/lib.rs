//! # mesh-xds
//!
//! xDS on the wire, with envoy-types protos over tonic. Protobuf appears only in this crate, and
//! proto ↔ mesh-core conversion lives in one module, [`convert`].
//!
//! What each feature brings (the defaults need no `protoc` and no CLI crates):
//!
//! | feature | what |
//! |---|---|
//! | *(always)* | [`ResourceType`], the xDS types both sides name; [`config_dump`], Envoy-shaped config dumps; [`client`]: the ADS subscriber (state-of-the-world and delta) that converts resources to mesh-core's model, validates them and feeds the layers' `Reload` sinks, ACKing or NACKing each update; [`convert`]; [`tls`] to the control plane |
//! | `sdk` (default) | [`sdk`]: one call from a control-plane address to ready router, rate-limit and load-balancing layers, every sink wired inside |
//! | `otel` | `sdk::otel`: per-request spans continuing the W3C trace context, exported over OTLP/gRPC (mesh-telemetry) |
//! | `control-plane` | [`server`] (per-node snapshot cache, the aggregated and per-type discovery services, admin) and [`source`] (the `mesh.yaml` file source) |
//! | `etcd` | the etcd source and registration helpers (etcd-client's build script runs `protoc`) |
//! | `cli` | the `mesh-control-plane` binary (clap, anyhow, tracing-subscriber) |

pub mod client;
pub mod config_dump;
pub mod convert;
mod resource_type;
#[cfg(feature = "sdk")]
pub mod sdk;
#[cfg(feature = "control-plane")]
pub mod server;
#[cfg(feature = "control-plane")]
pub mod source;
pub mod tls;

pub use resource_type::ResourceType;

//! Shared pieces of the runnable examples in this folder.
//!
//! The examples (the one-command demo mesh, the SDK client wrapping a hyper client with the mesh
//! layers, gRPC through the layers, and Envoy bootstraps for our control plane) land with the
//! sidecar issue. This library holds what they share.

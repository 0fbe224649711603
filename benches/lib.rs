//! Shared pieces of the benchmarks in this folder.
//!
//! criterion benchmarks of each layer (`cargo bench -p mesh-benches`) live beside this file as
//! `[[bench]]` targets; the chain benchmark (our sidecars vs Envoy vs a minimal hyper forwarder)
//! is driven by `scripts/bench`.

//! # mesh-telemetry
//!
//! Per-hop distributed tracing with OpenTelemetry, for the sidecar's listeners and for
//! applications that embed the mesh (`mesh_xds::sdk`, feature `otel`).
//!
//! - [`TraceLayer`] starts one span per request: a child of the request's W3C `traceparent`, or
//!   the root of a new trace when it has none (or an invalid one). It sets the outgoing
//!   `traceparent` to its own span, so the next hop continues the trace, records the
//!   OpenTelemetry HTTP semantic-convention attributes, and ends the span when the response
//!   body ends (or the call fails).
//! - [`OtlpTracing`] is the export pipeline: parent-based ratio sampling, a batch span processor
//!   (its own thread and a bounded queue: the data path never waits on export, and a dead
//!   collector costs nothing but dropped spans) and the OTLP/gRPC exporter (tonic) on a
//!   runtime of its own, so encoding and sending spans never run on the request threads.
//!
//! ```no_run
//! use mesh_telemetry::{OtlpTracing, SpanKind, TelemetryError, TracingOptions};
//! use tower::Layer;
//!
//! # async fn demo<S>(client: S) -> Result<(), TelemetryError> {
//! let tracing = OtlpTracing::start(
//!     &TracingOptions::new("http://127.0.0.1:4317").sampling_ratio(0.01).service_name("orders"),
//! )?;
//! let traced = tracing.layer(SpanKind::Client).layer(client);
//! # drop(traced);
//! // ... and on the way out, export what is queued:
//! tracing.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Tracing off costs nothing: a program that configures no exporter does not put the layer in
//! its stack at all.

mod attributes;
mod body;
mod layer;
mod pipeline;
mod propagation;
mod runtime;

pub use body::TracedBody;
pub use layer::{ResponseFuture, Trace, TraceLayer};
pub use opentelemetry::trace::SpanKind;
pub use opentelemetry_sdk::trace::SdkTracer;
pub use pipeline::{OtlpTracing, TelemetryError, TracingOptions};
pub use propagation::TRACEPARENT;

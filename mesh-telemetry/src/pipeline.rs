//! The export pipeline: sampler, batch span processor and OTLP/gRPC exporter, built from
//! [`TracingOptions`] and owned by [`OtlpTracing`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use crate::runtime::{ExportRuntime, StartError};
use crate::TraceLayer;

/// Where spans go and which requests are traced.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingOptions {
    /// The OTLP/gRPC collector (`http://127.0.0.1:4317`).
    pub endpoint: String,
    /// The share of new traces sampled, from 0.0 to 1.0. Parent-based: a request whose
    /// `traceparent` says sampled is always traced, one that says not sampled never is; the
    /// ratio decides only for requests that start a trace.
    pub sampling_ratio: f64,
    /// The `service.name` resource attribute of every span.
    pub service_name: String,
    /// How long the batch processor collects spans before an export (default 5 s).
    pub export_delay: Duration,
    /// How long one export may take before it is abandoned (default 10 s).
    pub export_timeout: Duration,
    /// Spans queued for export at most; beyond, new spans are dropped (default 2048).
    pub max_queue: usize,
}

impl TracingOptions {
    /// Export to `endpoint`, every new trace sampled, service `mesh`, the SDK's batch defaults.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            sampling_ratio: 1.0,
            service_name: "mesh".to_owned(),
            export_delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
            max_queue: 2048,
        }
    }

    /// The share of new traces sampled (0.0 to 1.0).
    #[must_use]
    pub fn sampling_ratio(mut self, ratio: f64) -> Self {
        self.sampling_ratio = ratio;
        self
    }

    /// The `service.name` of the spans.
    #[must_use]
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// How long spans are collected before an export.
    #[must_use]
    pub fn export_delay(mut self, delay: Duration) -> Self {
        self.export_delay = delay;
        self
    }

    /// Checks the options without starting anything.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(TelemetryError::SamplingRatio(self.sampling_ratio));
        }
        let uri: Result<http::Uri, _> = self.endpoint.parse();
        match uri {
            Ok(u) if u.scheme().is_some() && u.authority().is_some() => Ok(()),
            _ => Err(TelemetryError::Endpoint(self.endpoint.clone())),
        }
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `sampling_ratio` outside 0.0..=1.0 (or NaN).
    #[error("tracing: sampling_ratio {0} is not between 0.0 and 1.0")]
    SamplingRatio(f64),
    /// `endpoint` is not an absolute URL.
    #[error("tracing: endpoint {0:?} is not a URL like http://127.0.0.1:4317")]
    Endpoint(String),
    /// The export thread or its runtime could not start.
    #[error("tracing: export thread: {0}")]
    Runtime(std::io::Error),
    /// The OTLP exporter refused its configuration.
    #[error("tracing: OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Parent-based ratio sampling: a sampled parent is always followed (and an unsampled one
/// never), new traces are sampled with probability `ratio` (by trace id, so every hop that
/// starts from the same id agrees).
pub(crate) fn sampler(ratio: f64) -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
}

/// A running export pipeline: hands out [`TraceLayer`]s and flushes on
/// [`shutdown`](Self::shutdown). Cheap to clone; clones share the pipeline.
///
/// Export never blocks a request: finished spans go into a bounded queue (dropped when it is
/// full) that the batch processor's own thread drains to the collector, over a gRPC channel on
/// a runtime of its own (one more thread), so neither export nor its protobuf encoding runs on
/// the threads that serve requests. With the collector down, exports fail there and spans are
/// dropped; requests do not notice.
#[derive(Clone, Debug)]
pub struct OtlpTracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    runtime: Arc<Mutex<Option<ExportRuntime>>>,
}

impl OtlpTracing {
    /// Starts the pipeline: the export thread and its runtime, the exporter's gRPC channel
    /// (connected lazily, so a collector that is not up yet is no error), the batch processor.
    pub fn start(opts: &TracingOptions) -> Result<Self, TelemetryError> {
        opts.validate()?;
        let (endpoint, timeout) = (opts.endpoint.clone(), opts.export_timeout);
        let (runtime, exporter) = ExportRuntime::start(move || {
            SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .build()
        })
        .map_err(|e| match e {
            StartError::Runtime(e) => TelemetryError::Runtime(e),
            StartError::Build(e) => TelemetryError::Exporter(e),
        })?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(opts.export_delay)
            .with_max_queue_size(opts.max_queue)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            .with_sampler(sampler(opts.sampling_ratio))
            .with_resource(
                Resource::builder()
                    .with_service_name(opts.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("mesh");
        Ok(Self {
            provider,
            tracer,
            runtime: Arc::new(Mutex::new(Some(runtime))),
        })
    }

    /// A layer starting spans of `kind` (see [`TraceLayer::new`]).
    pub fn layer(&self, kind: SpanKind) -> TraceLayer {
        TraceLayer::new(self.tracer.clone(), kind)
    }

    /// The tracer, for spans of your own in the same pipeline.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Exports what is queued (bounded by the export timeout) and stops the processor's thread.
    /// Spans that end afterwards are dropped.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // The SDK's shutdown blocks until the processor's thread has exported (over the export
        // runtime, stopped after it): wait for both off the caller's runtime threads.
        let done = tokio::task::spawn_blocking(move || {
            let flushed = provider.shutdown();
            if let Some(rt) = runtime {
                rt.stop();
            }
            flushed
        })
        .await;
        // A failed flush is worth a line, not an error: the spans are lost either way.
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "tracing: flushing spans on shutdown failed");
        }
    }
}

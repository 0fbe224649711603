//! `bench-otlp-sink`: the chain benchmark's span sink. An OTLP/gRPC trace service (the
//! OpenTelemetry project's protos, tonic) that counts the spans it receives and drops them, so
//! the tracing rows measure what exporting costs the sidecar and not what a collector costs
//! the machine. Prints `spans N` (the running total) each second it changed.
//!
//! Usage: `bench-otlp-sink 127.0.0.1:4317`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// Counts and drops.
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .ok_or("usage: bench-otlp-sink ADDR")?
        .parse()?;
    let spans = Arc::new(AtomicU64::new(0));
    let report = Arc::clone(&spans);
    tokio::spawn(async move {
        let mut last = u64::MAX;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = report.load(Ordering::Relaxed);
            if now != last {
                println!("spans {now}");
                last = now;
            }
        }
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink { spans }))
        .serve(addr)
        .await?;
    Ok(())
}

//! The discovery services on the wire: the streaming methods are served here, at the HTTP
//! level, so responses go out as shared pre-encoded bytes ([`super::wire`]) rather than through
//! tonic's per-stream encoder; every other method (the unary fetches) goes to the generated
//! service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::Status;

use super::callbacks::StreamKind;
use super::delta::Delta;
use super::request::Requests;
use super::sotw::Sotw;
use super::wire::ResponseBody;
use super::xds::XdsServer;
use crate::ResourceType;

/// One discovery service: its streaming methods served by `server`, the rest by `inner`.
#[derive(Clone)]
pub(crate) struct Discovery<S> {
    inner: S,
    server: XdsServer,
    /// The one type a per-type service serves (`None` on ADS).
    fixed: Option<ResourceType>,
}

impl<S> Discovery<S> {
    pub(crate) fn new(inner: S, server: XdsServer, fixed: Option<ResourceType>) -> Self {
        Self {
            inner,
            server,
            fixed,
        }
    }

    fn stream(&self, req: http::Request<Body>, delta: bool) -> http::Response<Body> {
        if let Some(enc) = req.headers().get("grpc-encoding") {
            if enc != "identity" {
                return Status::unimplemented(format!(
                    "grpc-encoding {enc:?} is not supported; send uncompressed messages"
                ))
                .into_http();
            }
        }
        let peer = super::identity::peer_uri_sans(req.extensions());
        let body = req.into_body();
        let started = if delta {
            let requests = Requests::<DeltaDiscoveryRequest>::new(body);
            let kind = self
                .fixed
                .map_or(StreamKind::DeltaAds, StreamKind::DeltaSingle);
            self.server.start(kind, Delta::new, requests, peer)
        } else {
            let requests = Requests::<DiscoveryRequest>::new(body);
            let kind = self.fixed.map_or(StreamKind::Ads, StreamKind::Single);
            self.server.start(kind, Sotw::new, requests, peer)
        };
        match started {
            Ok(rx) => {
                let mut resp = http::Response::new(Body::new(ResponseBody::new(rx)));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                resp
            }
            Err(status) => status.into_http(),
        }
    }
}

impl<S: NamedService> NamedService for Discovery<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> Service<http::Request<Body>> for Discovery<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // Methods are `/<service>/<Method>`: `Stream*` (SotW), `Delta*` and `Fetch*`.
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        if method.starts_with("Stream") {
            let resp = self.stream(req, false);
            return Box::pin(std::future::ready(Ok(resp)));
        }
        if method.starts_with("Delta") {
            let resp = self.stream(req, true);
            return Box::pin(std::future::ready(Ok(resp)));
        }
        // Generated tonic services are always ready.
        Box::pin(self.inner.clone().call(req))
    }
}

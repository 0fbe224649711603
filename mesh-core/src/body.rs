//! The one body type that crosses crate boundaries.
//!
//! Layers take and return `http::Request<Body>` / `http::Response<Body>`, so a stack of them is
//! a concrete type rather than a generic tower of where-clauses. `Body` is unsync-boxed because
//! tonic's bodies are `Send` but not `Sync`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

/// A boxed, type-erased error, as tower and hyper use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request and response body of every mesh layer.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body holding exactly these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose error converts into a [`BoxError`] (hyper's `Incoming`, tonic's body).
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

//! The one body type that crosses crate boundaries.
//!
//! Layers take and return `http::Request<Body>` / `http::Response<Body>`, so a stack of them is
//! a concrete type rather than a generic tower of where-clauses. `Body` is unsync-boxed because
//! tonic's bodies are `Send` but not `Sync`.
//!
//! `Body` is a struct, not an alias of http-body-util's `UnsyncBoxBody<Bytes, BoxError>`: that
//! type's name carries a trait object (`dyn Error + 'static`), and rustc, checking that an
//! `async` block holding a `Request<UnsyncBoxBody<..>>` is `Send`, erases the `'static` and then
//! cannot find a `Service` impl general enough ("implementation of `Service` is not general
//! enough"). A named struct has no lifetime to erase, so `tokio::spawn(client.oneshot(req))`
//! compiles.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// A boxed, type-erased error, as tower and hyper use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request and response body of every mesh layer: any body, boxed (`Send`, not `Sync`).
pub struct Body {
    inner: UnsyncBoxBody<Bytes, BoxError>,
}

impl Body {
    /// Boxes any body whose error converts into a [`BoxError`] (see [`boxed`]).
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        boxed(body)
    }
}

impl Default for Body {
    fn default() -> Self {
        empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("size_hint", &http_body::Body::size_hint(&self.inner))
            .finish_non_exhaustive()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body holding exactly these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body {
        inner: Full::new(bytes.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    }
}

/// An empty body.
pub fn empty() -> Body {
    Body {
        inner: Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    }
}

/// Boxes a body whose error already is a [`BoxError`] (a wrapper of another [`Body`], say)
/// without [`boxed`]'s error-converting layer, which every frame would pass through.
pub fn boxed_exact<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    Body {
        inner: body.boxed_unsync(),
    }
}

/// Boxes any body whose error converts into a [`BoxError`] (hyper's `Incoming`, tonic's body).
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Body {
        inner: body.map_err(Into::into).boxed_unsync(),
    }
}

//! The requests of a discovery stream, decoded straight from the HTTP/2 body.
//!
//! tonic's `Streaming` decodes into one buffer per stream that keeps the capacity of the
//! largest request for the stream's life (a 100-name EDS subscription grows it to ~4 KB), and
//! every subscriber holds one. Here a message that arrives whole in one DATA frame (the usual
//! case: xDS requests are a few KB) is decoded from that frame's bytes, and a message split
//! across frames is gathered into a buffer of exactly its size that is freed once decoded: an
//! idle stream holds no buffer at all.
//!
//! Errors follow tonic's decoder (same codes and messages): a bad compression flag or an
//! undecodable message is `INTERNAL`, a message above the 4 MiB receive limit is
//! `OUT_OF_RANGE`, a body that ends inside a message is `INTERNAL`; the stream ends after an
//! error. A body cancelled by the client, or its trailers, end the stream quietly.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use http_body::Body as _;
use tonic::body::Body;
use tonic::{Code, Status};

use super::wire::PREFIX;

/// The largest request accepted (tonic's default receive limit).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// A stream of `M` decoded from a gRPC request body.
pub(crate) struct Requests<M> {
    body: Body,
    /// Received bytes not yet decoded (a slice of the last DATA frame); empty when none.
    rest: Bytes,
    /// A message split across frames, gathered (prefix included); empty and unallocated
    /// between messages.
    partial: BytesMut,
    done: bool,
    _msg: PhantomData<fn() -> M>,
}

impl<M> Requests<M> {
    /// The requests of `body`.
    pub(crate) fn new(body: Body) -> Self {
        Self {
            body,
            rest: Bytes::new(),
            partial: BytesMut::new(),
            done: false,
            _msg: PhantomData,
        }
    }
}

/// The length of the message a gRPC prefix announces, checked.
fn message_len(prefix: &[u8]) -> Result<usize, Status> {
    match prefix.first() {
        Some(0) => {}
        Some(1) => {
            // Compressed requests are refused up front (the stream's grpc-encoding must be
            // identity), so a set flag is the case gRPC says must fail with INTERNAL.
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {} (valid flags are 0 and 1)",
                f.copied().unwrap_or_default()
            )))
        }
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(prefix.get(1..PREFIX).unwrap_or(&[0; 4]));
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {MAX_MESSAGE} bytes"
        )));
    }
    Ok(len)
}

fn decode<M: prost::Message + Default>(msg: &[u8]) -> Result<M, Status> {
    M::decode(msg.get(PREFIX..).unwrap_or_default()).map_err(|e| Status::internal(e.to_string()))
}

impl<M: prost::Message + Default> Requests<M> {
    /// The next whole message from the bytes received so far, if there is one; takes what it
    /// needs from `rest` into `partial` when the message is split.
    fn take(&mut self) -> Result<Option<M>, Status> {
        if self.partial.is_empty() {
            if self.rest.len() < PREFIX {
                if !self.rest.is_empty() {
                    self.partial.extend_from_slice(&self.rest);
                    self.rest = Bytes::new();
                }
                return Ok(None);
            }
            let len = message_len(&self.rest)?;
            if self.rest.len() >= PREFIX + len {
                // The common case: the whole message is in the frame, decode it in place.
                let msg = self.rest.split_to(PREFIX + len);
                return decode(&msg).map(Some);
            }
            self.partial.reserve(PREFIX + len);
            self.partial.extend_from_slice(&self.rest);
            self.rest = Bytes::new();
            return Ok(None);
        }
        if self.partial.len() < PREFIX {
            let n = (PREFIX - self.partial.len()).min(self.rest.len());
            self.partial.extend_from_slice(&self.rest[..n]);
            self.rest.advance(n);
            if self.partial.len() < PREFIX {
                return Ok(None);
            }
        }
        let want = PREFIX + message_len(&self.partial)?;
        self.partial.reserve(want - self.partial.len());
        let n = (want - self.partial.len()).min(self.rest.len());
        self.partial.extend_from_slice(&self.rest[..n]);
        self.rest.advance(n);
        if self.partial.len() < want {
            return Ok(None);
        }
        // Take the whole allocation so none stays with the stream between messages.
        let msg = std::mem::take(&mut self.partial);
        decode(&msg).map(Some)
    }
}

impl<M: prost::Message + Default> Stream for Requests<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.take() {
                Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                // `take` used up every byte received: wait for the next frame.
                Ok(None) => {}
                Err(status) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    // Trailers end the requests, as in tonic.
                    Err(_) => this.done = true,
                },
                Some(Err(status)) => {
                    this.done = true;
                    if status.code() != Code::Cancelled {
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                None => {
                    this.done = true;
                    if !this.partial.is_empty() {
                        return Poll::Ready(Some(Err(Status::internal(
                            "Unexpected EOF decoding stream.",
                        ))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use futures::StreamExt;
    use http_body::Frame;
    use prost::Message;

    fn body(chunks: Vec<Vec<u8>>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Status>(Frame::data(Bytes::from(c))));
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    fn framed(msg: &DiscoveryRequest) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
        msg.encode(&mut v).unwrap();
        v
    }

    fn req(n: usize) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: "t".into(),
            resource_names: (0..n).map(|i| format!("svc-{i}")).collect(),
            ..DiscoveryRequest::default()
        }
    }

    async fn all(b: Body) -> Vec<Result<DiscoveryRequest, Status>> {
        Requests::<DiscoveryRequest>::new(b).collect().await
    }

    #[tokio::test]
    async fn messages_whole_packed_and_split_across_frames() {
        let (a, b, c) = (req(1), req(100), req(0));
        let mut packed = framed(&a);
        packed.extend(framed(&b));
        let split = framed(&b);
        // The second message is cut inside its prefix and inside its payload.
        let chunks = vec![
            packed,
            split[..3].to_vec(),
            split[3..40].to_vec(),
            Vec::new(),
            split[40..].to_vec(),
            framed(&c),
        ];
        let got: Vec<_> = all(body(chunks))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, vec![a, b.clone(), b, c]);
    }

    #[tokio::test]
    async fn no_buffer_is_kept_between_messages() {
        let m = framed(&req(100));
        let mut r =
            Requests::<DiscoveryRequest>::new(body(vec![m[..100].to_vec(), m[100..].to_vec()]));
        assert!(r.next().await.unwrap().is_ok());
        assert_eq!(r.partial.capacity(), 0);
        assert!(r.rest.is_empty());
        assert!(r.next().await.is_none());
    }

    #[tokio::test]
    async fn malformed_messages_end_the_stream_with_tonics_status() {
        let mut bad_flag = framed(&req(1));
        bad_flag[0] = 2;
        let mut compressed = framed(&req(1));
        compressed[0] = 1;
        let garbage = vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        let huge = vec![0, 0x7f, 0, 0, 0];
        for (chunk, code) in [
            (bad_flag, Code::Internal),
            (compressed, Code::Internal),
            (garbage, Code::Internal),
            (huge, Code::OutOfRange),
        ] {
            let got = all(body(vec![framed(&req(1)), chunk, framed(&req(1))])).await;
            assert_eq!(got.len(), 2, "{got:?}");
            assert!(got[0].is_ok());
            assert_eq!(got[1].as_ref().unwrap_err().code(), code, "{got:?}");
        }
        // The body ends inside a message.
        let truncated = framed(&req(3))[..9].to_vec();
        let got = all(body(vec![framed(&req(1)), truncated])).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1].as_ref().unwrap_err().code(), Code::Internal);
    }

    #[tokio::test]
    async fn a_cancelled_body_ends_quietly() {
        let frames = vec![
            Ok(Frame::data(Bytes::from(framed(&req(1))))),
            Err(Status::cancelled("gone")),
        ];
        let b = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        let got = all(b).await;
        assert_eq!(got.len(), 1);
        assert!(got[0].is_ok());
    }
}

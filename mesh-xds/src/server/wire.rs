//! Discovery responses as gRPC messages built from shared, pre-encoded bytes.
//!
//! A response is a small per-stream head (version, type URL, nonce, removals) followed by the
//! resources' wire entries, which every resource encodes once ([`Resource::sotw_entry`],
//! [`Resource::delta_entry`]) and every stream shares. Protobuf parsers accept fields in any
//! order and concatenate repeated fields, so head + entries is the exact message a typed
//! encoder would have produced, re-ordered. Per subscriber a response costs a copy of the
//! entries into one buffer that is freed once sent (entries of 32 KB and more are shared
//! outright): no re-encoding, and no per-stream encode buffer that keeps the capacity of the
//! largest response for the stream's life, as tonic's encoder does (that buffer was most of
//! the memory per subscriber, see benches/XDS_SCALE.md).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use http::HeaderMap;
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use super::resource::Resource;

/// gRPC's message prefix: a compression flag and a big-endian length (encoded here, decoded
/// by `super::request`).
pub(super) const PREFIX: usize = 5;

/// Entries below this size are copied into the message's one buffer (freed once sent) rather
/// than sent as chunks of their own. Every chunk is a frame h2 queues and writes on its own
/// (a syscall each), and the connection's frame queue keeps the capacity of its longest
/// backlog for good: with a chunk per 3 KB assignment that queue alone was 40 KB per
/// subscriber. Copying is one memcpy; only huge resources are worth sharing.
const COPY_BELOW: usize = 32 * 1024;

/// One gRPC message (prefix included), as the chunks that are sent in order. A boxed slice
/// rather than a `Vec`: every stream's response channel allocates 32 slots of this up front.
#[derive(Debug, Clone)]
pub(crate) struct Encoded(Box<[Bytes]>);

/// What a stream's task hands the response body: a message, or the status that ends the
/// stream. Boxed so the channel's slots stay small (tokio allocates them in blocks of 32).
pub(crate) type Out = Result<Encoded, Box<Status>>;

/// The sending half of a stream's responses.
pub(crate) type Tx = mpsc::Sender<Out>;

impl Encoded {
    /// `head` (every field but the resources) followed by the resource entries.
    fn build<'a>(head: &impl Message, entries: impl Iterator<Item = &'a Bytes> + Clone) -> Self {
        let head_len = head.encoded_len();
        let (mut total, mut small) = (head_len, 0);
        for e in entries.clone() {
            total += e.len();
            if e.len() < COPY_BELOW {
                small += e.len();
            }
        }
        let mut buf = BytesMut::with_capacity(PREFIX + head_len + small);
        buf.put_u8(0);
        // A response over 4 GiB cannot be framed; no snapshot comes near (clients cap
        // messages far lower), so saturate rather than fail.
        buf.put_u32(u32::try_from(total).unwrap_or(u32::MAX));
        head.encode_raw(&mut buf);
        // Mostly one chunk (every entry copied): sized so the boxed slice needs no realloc.
        let mut chunks = Vec::with_capacity(1);
        for e in entries {
            if e.len() < COPY_BELOW {
                buf.extend_from_slice(e);
            } else {
                if !buf.is_empty() {
                    chunks.push(buf.split().freeze());
                }
                chunks.push(e.clone());
            }
        }
        if !buf.is_empty() {
            chunks.push(buf.freeze());
        }
        Self(chunks.into_boxed_slice())
    }

    /// A state-of-the-world response: `head` carries version, type URL and nonce.
    pub(crate) fn sotw<'a>(
        head: &DiscoveryResponse,
        resources: impl Iterator<Item = &'a Resource> + Clone,
    ) -> Self {
        debug_assert!(head.resources.is_empty());
        Self::build(head, resources.map(Resource::sotw_entry))
    }

    /// A delta response: `head` carries version, type URL, nonce and removals.
    pub(crate) fn delta<'a>(
        head: &DeltaDiscoveryResponse,
        resources: impl Iterator<Item = &'a Resource> + Clone,
    ) -> Self {
        debug_assert!(head.resources.is_empty());
        Self::build(head, resources.map(Resource::delta_entry))
    }

    /// Decodes the message back into its type (for the typed trait methods and tests).
    pub(crate) fn decode<M: Message + Default>(&self) -> Result<M, Status> {
        let mut bytes = BytesMut::new();
        for c in &self.0 {
            bytes.extend_from_slice(c);
        }
        M::decode(bytes.get(PREFIX..).unwrap_or_default())
            .map_err(|e| Status::internal(format!("cannot decode a response: {e}")))
    }

    /// Size on the wire, prefix included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }
}

/// A gRPC response body fed by a stream's task: each message's chunks as DATA frames, then
/// the trailers (`grpc-status` 0 when the task ends, or the status it sent).
pub(crate) struct ResponseBody {
    rx: mpsc::Receiver<Out>,
    chunks: std::vec::IntoIter<Bytes>,
    done: bool,
}

impl ResponseBody {
    pub(crate) fn new(rx: mpsc::Receiver<Out>) -> Self {
        Self {
            rx,
            chunks: Vec::new().into_iter(),
            done: false,
        }
    }
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value fails; the code still can.
        map.clear();
        let _ = Status::new(status.code(), "").add_header(&mut map);
    }
    map
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(chunk) = self.chunks.next() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(Ok(msg)) => self.chunks = Vec::from(msg.0).into_iter(),
                Some(Err(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
                }
                None => {
                    self.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.chunks.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::server::snapshot::tests::{eds_cluster, route};
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use envoy_types::pb::envoy::service::discovery::v3::Resource as WireResource;
    use http_body_util::BodyExt;

    fn resources() -> Vec<Resource> {
        // Small (copied) and large (shared) entries mixed.
        let big = Resource::encode(&RouteConfiguration {
            name: "big".into(),
            virtual_hosts: vec![VirtualHost {
                name: "x".repeat(2 * COPY_BELOW),
                ..VirtualHost::default()
            }],
            ..RouteConfiguration::default()
        })
        .unwrap();
        vec![eds_cluster("a"), big, route("r")]
    }

    #[test]
    fn a_sotw_response_decodes_as_the_typed_one() {
        let rs = resources();
        assert!(rs[1].sotw_entry().len() >= COPY_BELOW, "one shared chunk");
        let head = DiscoveryResponse {
            version_info: "v1".into(),
            type_url: "t".into(),
            nonce: "7".into(),
            ..DiscoveryResponse::default()
        };
        let enc = Encoded::sotw(&head, rs.iter());
        let typed = DiscoveryResponse {
            resources: rs.iter().map(|r| r.any().clone()).collect(),
            ..head
        };
        assert_eq!(enc.decode::<DiscoveryResponse>().unwrap(), typed);
        assert_eq!(enc.len(), PREFIX + typed.encoded_len());
        assert!(enc.0.len() >= 3, "the large entry is its own chunk");
        assert!(
            enc.0
                .iter()
                .any(|c| c.as_ptr() == rs[1].sotw_entry().as_ptr()),
            "the large entry is shared, not copied"
        );
    }

    #[test]
    fn a_delta_response_decodes_as_the_typed_one() {
        let rs = resources();
        let head = DeltaDiscoveryResponse {
            system_version_info: "v2".into(),
            type_url: "t".into(),
            nonce: "8".into(),
            removed_resources: vec!["gone".into()],
            ..DeltaDiscoveryResponse::default()
        };
        let enc = Encoded::delta(&head, rs.iter());
        let typed = DeltaDiscoveryResponse {
            resources: rs
                .iter()
                .map(|r| WireResource {
                    name: r.name().into(),
                    version: r.version(),
                    resource: Some(r.any().clone()),
                    ..WireResource::default()
                })
                .collect(),
            ..head
        };
        assert_eq!(enc.decode::<DeltaDiscoveryResponse>().unwrap(), typed);
        assert_eq!(enc.len(), PREFIX + typed.encoded_len());
    }

    #[tokio::test]
    async fn the_body_sends_messages_then_the_status_as_trailers() {
        let (tx, rx) = mpsc::channel(4);
        let head = DiscoveryResponse::default();
        let msg = Encoded::sotw(&head, std::iter::empty());
        tx.send(Ok(msg.clone())).await.unwrap();
        tx.send(Err(Box::new(Status::cancelled("bye"))))
            .await
            .unwrap();
        let mut body = ResponseBody::new(rx);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, msg.0[0]);
        let t = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(t["grpc-status"], "1");
        assert!(body.frame().await.is_none());

        let (tx, rx) = mpsc::channel(1);
        drop(tx);
        let mut body = ResponseBody::new(rx);
        let t = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(t["grpc-status"], "0");
    }
}

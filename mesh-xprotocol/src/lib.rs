//! # mesh-xprotocol
//!
//! The mesh's RPC protocols besides HTTP ("xprotocol", as MOSN calls them): SOFA bolt and
//! dubbo. Each protocol is an [`XCodec`]: it cuts a byte stream into [`Frame`]s, decodes only what
//! routing needs (service, method, attachments, request id) and leaves the body untouched, so a
//! frame is forwarded as the bytes it arrived as, with only its request id rewritten.
//!
//! Codecs do no I/O: they are state-free functions over buffers, tested without sockets. The
//! multiplexing (many downstream requests over a few upstream connections, ids rewritten per
//! upstream connection and mapped back) sits on top of this trait.

use bytes::{Bytes, BytesMut};

pub mod bolt;
pub mod dubbo;
pub mod mux;

pub use bolt::BoltCodec;
pub use dubbo::DubboCodec;
pub use mux::{Expired, InFlight, Pending};

/// An RPC protocol the mesh speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// SOFA bolt v1 (SOFARPC).
    Bolt,
    /// Dubbo 2 framing with hessian2 bodies.
    Dubbo,
}

impl Protocol {
    /// The name in config and metrics (`bolt`, `dubbo`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bolt => "bolt",
            Self::Dubbo => "dubbo",
        }
    }
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A request; `oneway` ones get no response.
    Request {
        /// No response is expected.
        oneway: bool,
    },
    /// A response to the request with the same id.
    Response,
    /// A heartbeat request (answered by the side that receives it, or passed on).
    HeartbeatRequest,
    /// A heartbeat response.
    HeartbeatResponse,
    /// A one-way notice about the connection, never answered: dubbo's event frames other than
    /// two-way heartbeats (Apache Dubbo's `HeaderExchangeHandler.handlerEvent`). A provider about to
    /// shut down sends the read-only event `R` on each channel, after which a consumer sends no
    /// new requests on that channel; `W` makes it writable again.
    Event {
        /// `Some(true)` read-only, `Some(false)` writable again, `None` another event.
        read_only: Option<bool>,
    },
}

/// The routing fields of a request: what the router matches on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcHeader {
    /// The service (interface) name: bolt's `service` header, dubbo's path.
    pub service: String,
    /// The method name.
    pub method: String,
    /// Header fields and attachments (bolt headers, dubbo attachments such as `version` and
    /// `group`), in frame order.
    pub attachments: Vec<(String, String)>,
}

/// One frame, decoded as far as routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Request, response or heartbeat.
    pub kind: FrameKind,
    /// The request id as on the wire (bolt: 32 bits, dubbo: 64 bits).
    pub request_id: u64,
    /// A request's routing fields (empty for responses and heartbeats).
    pub header: RpcHeader,
    /// A response's protocol status (bolt's response status, dubbo's status byte).
    pub status: Option<u16>,
    /// The whole frame as received; forwarded as is but for the request id.
    pub raw: BytesMut,
}

/// Why the mesh answers a request itself, with the protocol's own error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XError {
    /// No route or no healthy endpoint for the service ("no provider").
    NoProvider,
    /// The upstream did not answer in time.
    Timeout,
    /// Refused by a rate limit or circuit breaker.
    Overloaded,
    /// The upstream connection failed or closed before the response.
    UpstreamFailure,
    /// The request could not be decoded.
    Malformed,
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Not this protocol's framing (bad magic, unknown command, bad length).
    #[error("malformed {protocol} frame: {reason}")]
    Malformed {
        /// Which protocol.
        protocol: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The frame's declared length is above the configured limit.
    #[error("{protocol} frame of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// Which protocol.
        protocol: &'static str,
        /// The declared length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A request whose framing is intact (its length was known and its bytes are consumed) but
    /// whose routing fields do not decode. Answered with the protocol's bad-request response,
    /// and the connection goes on, as Dubbo's and SOFA bolt's own servers do (the frame
    /// boundary is not in doubt, so the next frame is not either).
    #[error("bad {protocol} request {}: {reason}", frame.request_id)]
    BadRequest {
        /// Which protocol.
        protocol: &'static str,
        /// What was wrong.
        reason: String,
        /// The request as far as the header went (kind, id, raw bytes; no routing fields):
        /// what [`XCodec::error_response`] answers.
        frame: Box<Frame>,
    },
}

/// A protocol's framing: decoding, request-id rewriting and the responses the mesh writes itself.
pub trait XCodec: Send + Sync + 'static {
    /// Which protocol this is.
    fn protocol(&self) -> Protocol;

    /// Decodes one frame from the front of `buf`, removing its bytes; `Ok(None)` when `buf` does
    /// not yet hold a whole frame (nothing consumed). A frame whose declared length is over
    /// `max_frame` is refused as soon as its header is read, before its body arrives.
    fn decode(&self, buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, CodecError>;

    /// Rewrites the frame's request id in `frame.raw` (and `frame.request_id`), for multiplexing
    /// over an upstream connection.
    fn set_request_id(&self, frame: &mut Frame, id: u64);

    /// Whether a response's status is the protocol's success (bolt `SUCCESS` 0, dubbo `OK` 20):
    /// what the mesh counts as a successful RPC.
    fn is_success(&self, response: &Frame) -> bool;

    /// The protocol's error response to `request`, carrying `error` (and its request id).
    fn error_response(&self, request: &Frame, error: XError) -> Bytes;

    /// The response to a heartbeat request.
    fn heartbeat_response(&self, request: &Frame) -> Bytes;
}

//! The multiplexing state of one upstream connection, with no I/O: request ids allocated per
//! connection, the in-flight map new id → (downstream, original id, deadline), responses
//! matched in any order, expiry of requests past their deadline, and failing everything when
//! the connection ends.
//!
//! The I/O driver (the sidecar's) owns one [`InFlight`] per upstream connection: it
//! [`insert`](InFlight::insert)s a request and writes it with the returned id, hands each
//! response to [`complete`](InFlight::complete), calls [`expire`](InFlight::expire) at
//! [`next_deadline`](InFlight::next_deadline), and [`fail_all`](InFlight::fail_all) when the
//! connection closes. Times are the caller's, so tests drive the clock.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::{Frame, XCodec, XError};

/// The largest id handed out: ids stay within 32 bits, which every protocol carries (bolt's
/// ids are 32 bits, dubbo's 64).
const MAX_ID: u64 = u32::MAX as u64;

/// The longest prefix of a request kept to build its error response (the fixed headers of
/// bolt (22 bytes) and dubbo (16 bytes) fit; codecs build error responses from them alone).
const STUB_LEN: usize = 32;

/// A request waiting for its response.
#[derive(Debug)]
pub struct Pending<D> {
    /// Where the response goes (the driver's handle on the downstream connection).
    pub downstream: D,
    /// The id the downstream client gave the request.
    pub original_id: u64,
    /// When the request times out.
    pub deadline: Instant,
    /// The request's fixed header, with its original id: enough for the codec's
    /// [`error_response`](XCodec::error_response).
    pub stub: Frame,
}

impl<D> Pending<D> {
    /// The protocol's error response to this request, with the downstream's id.
    pub fn error_response(&self, codec: &dyn XCodec, error: XError) -> bytes::Bytes {
        codec.error_response(&self.stub, error)
    }
}

/// A request that timed out, removed from the map.
pub type Expired<D> = Pending<D>;

/// The in-flight requests of one upstream connection.
#[derive(Debug)]
pub struct InFlight<D> {
    next_id: u64,
    map: HashMap<u64, Pending<D>>,
    deadlines: BTreeSet<(Instant, u64)>,
    capacity: usize,
}

impl<D> InFlight<D> {
    /// An empty map holding at most `capacity` requests at once.
    pub fn new(capacity: usize) -> Self {
        Self {
            next_id: 1,
            map: HashMap::new(),
            deadlines: BTreeSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// How many requests wait for a response.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Registers `request` (whose id is the downstream's) and rewrites its id to a fresh one
    /// of this connection, returned. When the map is full `downstream` is given back and the
    /// request left untouched: the caller answers `XError::Overloaded`.
    pub fn insert(
        &mut self,
        codec: &dyn XCodec,
        request: &mut Frame,
        downstream: D,
        deadline: Instant,
    ) -> Result<u64, D> {
        if self.map.len() >= self.capacity {
            return Err(downstream);
        }
        let id = self.allocate();
        let stub = Frame {
            kind: request.kind,
            request_id: request.request_id,
            header: Default::default(),
            status: None,
            raw: bytes::BytesMut::from(&request.raw[..request.raw.len().min(STUB_LEN)]),
        };
        let original_id = request.request_id;
        codec.set_request_id(request, id);
        self.deadlines.insert((deadline, id));
        self.map.insert(
            id,
            Pending {
                downstream,
                original_id,
                deadline,
                stub,
            },
        );
        Ok(id)
    }

    /// The next unused id (wrapping within 32 bits, skipping 0 and ids still in flight; the
    /// map is bounded by `capacity`, far below 2^32, so this ends quickly).
    fn allocate(&mut self) -> u64 {
        loop {
            let id = self.next_id;
            self.next_id = if id >= MAX_ID { 1 } else { id + 1 };
            if !self.map.contains_key(&id) {
                return id;
            }
        }
    }

    /// The waiting request a response with `upstream_id` answers, removed; `None` for an id
    /// not in flight (a late response after a timeout, or a confused peer: the caller drops
    /// it). The caller restores `original_id` in the response before writing it downstream.
    pub fn complete(&mut self, upstream_id: u64) -> Option<Pending<D>> {
        let p = self.map.remove(&upstream_id)?;
        self.deadlines.remove(&(p.deadline, upstream_id));
        Some(p)
    }

    /// The earliest deadline of a waiting request.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Removes and returns every request whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired<D>> {
        let mut out = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(p) = self.map.remove(&id) {
                out.push(p);
            }
        }
        out
    }

    /// Removes and returns every waiting request (the connection ended: each gets
    /// `XError::UpstreamFailure`).
    pub fn fail_all(&mut self) -> Vec<Pending<D>> {
        self.deadlines.clear();
        self.map.drain().map(|(_, p)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;

    use super::*;
    use crate::bolt::{self, BoltCodec, BoltRequest};
    use crate::FrameKind;

    fn req(id: u32) -> Frame {
        let wire = bolt::request(&BoltRequest {
            id,
            codec: 1,
            timeout_ms: 0,
            oneway: false,
            class: "C",
            headers: &[("service", "S")],
            content: b"body",
        });
        let mut buf = BytesMut::from(&wire[..]);
        BoltCodec.decode(&mut buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn ids_are_rewritten_and_mapped_back_out_of_order() {
        let t0 = Instant::now();
        let mut m = InFlight::new(16);
        // Two downstream clients both use id 1.
        let (mut a, mut b) = (req(1), req(1));
        let ia = m.insert(&BoltCodec, &mut a, "a", t0).unwrap();
        let ib = m.insert(&BoltCodec, &mut b, "b", t0).unwrap();
        assert_ne!(ia, ib);
        assert_eq!(a.request_id, ia);
        assert_eq!(&a.raw[5..9], &(ia as u32).to_be_bytes());
        // Responses arrive in reverse order.
        let pb = m.complete(ib).unwrap();
        assert_eq!((pb.downstream, pb.original_id), ("b", 1));
        let pa = m.complete(ia).unwrap();
        assert_eq!((pa.downstream, pa.original_id), ("a", 1));
        assert!(m.complete(ia).is_none(), "a second response is unknown");
        assert!(m.is_empty());
    }

    #[test]
    fn expiry_takes_only_what_is_due_and_answers_with_the_original_id() {
        let t0 = Instant::now();
        let mut m = InFlight::new(16);
        let (mut early, mut late) = (req(10), req(11));
        m.insert(&BoltCodec, &mut early, 1, t0 + Duration::from_millis(100))
            .unwrap();
        let late_id = m
            .insert(&BoltCodec, &mut late, 2, t0 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(m.next_deadline(), Some(t0 + Duration::from_millis(100)));
        assert!(m.expire(t0).is_empty());
        let gone = m.expire(t0 + Duration::from_secs(1));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].downstream, 1);
        let mut wire = BytesMut::from(&gone[0].error_response(&BoltCodec, XError::Timeout)[..]);
        let resp = BoltCodec.decode(&mut wire, 1 << 20).unwrap().unwrap();
        assert_eq!(resp.kind, FrameKind::Response);
        assert_eq!(resp.request_id, 10);
        assert_eq!(resp.status, Some(bolt::status::TIMEOUT));
        // The other request still completes.
        assert_eq!(m.complete(late_id).unwrap().original_id, 11);
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn full_map_refuses_and_fail_all_drains() {
        let t0 = Instant::now();
        let mut m = InFlight::new(2);
        let mut f = req(1);
        assert!(m.insert(&BoltCodec, &mut f.clone(), (), t0).is_ok());
        assert!(m.insert(&BoltCodec, &mut f.clone(), (), t0).is_ok());
        assert!(m.insert(&BoltCodec, &mut f, (), t0).is_err());
        assert_eq!(f.request_id, 1, "a refused request keeps its id");
        assert_eq!(m.fail_all().len(), 2);
        assert!(m.is_empty());
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn ids_wrap_and_skip_those_in_flight() {
        let t0 = Instant::now();
        let mut m = InFlight::new(4);
        m.next_id = MAX_ID;
        let a = m.insert(&BoltCodec, &mut req(1), (), t0).unwrap();
        assert_eq!(a, MAX_ID);
        let b = m.insert(&BoltCodec, &mut req(1), (), t0).unwrap();
        assert_eq!(b, 1, "wrapped past zero");
        m.next_id = 1;
        let c = m.insert(&BoltCodec, &mut req(1), (), t0).unwrap();
        assert_eq!(c, 2, "skipped id 1, still in flight");
    }
}

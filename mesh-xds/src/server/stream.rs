//! What SotW and delta streams share: the state every discovery stream has (its node, the
//! watch on that node's snapshot, nonces, the response channel) and the loop that drives one
//! until the client goes away.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::Status;

use super::cache::Current;
use super::snapshot::Snapshot;
use super::wire::{Encoded, Tx};
use super::xds::{Shared, StreamGuard};
use crate::ResourceType;

/// The state every discovery stream has, whatever its protocol.
pub(crate) struct StreamBase {
    pub(crate) shared: Arc<Shared>,
    pub(crate) guard: StreamGuard,
    /// The one type a per-type service serves (`None` on ADS).
    fixed: Option<ResourceType>,
    /// The node key, from the first request.
    pub(crate) node: Option<String>,
    rx: Option<watch::Receiver<Current>>,
    nonce: u64,
    tx: Tx,
    /// The URI SANs of the client's certificate (`None`: it presented none); see
    /// [`super::identity`].
    peer: Option<Arc<Vec<String>>>,
}

impl StreamBase {
    pub(crate) fn new(
        shared: Arc<Shared>,
        guard: StreamGuard,
        fixed: Option<ResourceType>,
        tx: Tx,
        peer: Option<Arc<Vec<String>>>,
    ) -> Self {
        Self {
            peer,
            shared,
            guard,
            fixed,
            node: None,
            rx: None,
            nonce: 0,
            tx,
        }
    }

    /// Whether this stream's client may receive `r` (workload certificates only for the
    /// identity its client certificate proves).
    pub(crate) fn may_receive(&self, r: &super::Resource) -> bool {
        super::identity::may_receive(self.peer.as_deref().map(Vec::as_slice), r)
    }

    /// The node's snapshot now, and when it was set.
    pub(crate) fn current(&self) -> Option<(Arc<Snapshot>, Instant)> {
        let rx = self.rx.as_ref()?;
        let cur = rx.borrow();
        Some((cur.snapshot.clone()?, cur.set_at))
    }

    /// The type a request is for and the stream's node key (bound by the first request, which
    /// must carry the node). `None`: a type this server does not serve, to ignore.
    pub(crate) fn begin(
        &mut self,
        type_url: &str,
        node: Option<&Node>,
    ) -> Result<Option<(ResourceType, String)>, Status> {
        let kind = match self.fixed {
            Some(k) if type_url.is_empty() || type_url == k.type_url() => k,
            Some(k) => {
                return Err(Status::invalid_argument(format!(
                    "this service serves {}, not {type_url}",
                    k.type_url(),
                )))
            }
            None => match ResourceType::from_type_url(type_url) {
                Some(k) => k,
                None => {
                    tracing::debug!(%type_url, "request for an unserved type ignored");
                    return Ok(None);
                }
            },
        };
        let node = match &self.node {
            Some(n) => n.clone(),
            None => {
                let node = node.ok_or_else(|| {
                    Status::invalid_argument("the first request must carry a node")
                })?;
                let key = self.shared.cache.node_key(node);
                self.rx = Some(self.shared.cache.watch(&key));
                self.node = Some(key.clone());
                key
            }
        };
        self.shared.callbacks.request(self.guard.id, &node, kind);
        Ok(Some((kind, node)))
    }

    /// A nonce no earlier response of this stream had.
    pub(crate) fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// Queues a response (waits while the client is behind).
    pub(crate) async fn send(&self, msg: Encoded) -> Result<(), Status> {
        self.tx
            .send(Ok(msg))
            .await
            .map_err(|_| Status::cancelled("client gone"))
    }
}

/// Per-type state of a stream: a slot per type, boxed (a `HashMap` of four types costs more
/// than what it holds, and every subscriber has one).
pub(crate) struct PerType<T>([Option<Box<T>>; 6]);

impl<T> Default for PerType<T> {
    fn default() -> Self {
        Self(Default::default())
    }
}

impl<T: Default> PerType<T> {
    pub(crate) fn contains(&self, kind: ResourceType) -> bool {
        self.0[kind.index()].is_some()
    }

    pub(crate) fn get(&self, kind: ResourceType) -> Option<&T> {
        self.0[kind.index()].as_deref()
    }

    pub(crate) fn get_mut(&mut self, kind: ResourceType) -> Option<&mut T> {
        self.0[kind.index()].as_deref_mut()
    }

    pub(crate) fn get_or_default(&mut self, kind: ResourceType) -> &mut T {
        self.0[kind.index()].get_or_insert_with(Box::default)
    }
}

/// A subscribed name, shared with the snapshot's resource of that name when there is one: a
/// subscription of 100 names then holds 100 pointers rather than 100 strings per subscriber.
pub(crate) fn intern(snap: Option<&Snapshot>, kind: ResourceType, name: &str) -> Arc<str> {
    snap.and_then(|s| s.of(kind).get(name))
        .map(|r| r.shared_name().clone())
        .unwrap_or_else(|| Arc::from(name))
}

/// One discovery protocol (SotW or delta) on top of [`StreamBase`].
pub(crate) trait Protocol: Send + 'static {
    /// The request message.
    type Request: Send + 'static;

    fn base(&mut self) -> &mut StreamBase;

    /// Handles a request (subscription change, ACK or NACK) and answers it if needed.
    fn on_request(&mut self, req: Self::Request)
        -> impl Future<Output = Result<(), Status>> + Send;

    /// Sends what changed after the node's snapshot changed.
    fn push_all(&mut self) -> impl Future<Output = Result<(), Status>> + Send;
}

/// What woke a stream up.
enum Event<R> {
    /// The next request, an error, or the end of the requests (`None`).
    Request(Option<Result<R, Status>>),
    /// The node's snapshot changed (`false`: the cache is gone).
    Changed(bool),
}

/// Waits for the next request or snapshot change.
async fn next_event<P, S>(p: &mut P, requests: &mut S) -> Event<P::Request>
where
    P: Protocol,
    S: Stream<Item = Result<P::Request, Status>> + Unpin + Send,
{
    let base = p.base();
    let changed = async {
        match base.rx.as_mut() {
            Some(rx) => rx.changed().await.is_ok(),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        req = requests.next() => Event::Request(req),
        ok = changed => Event::Changed(ok),
    }
}

/// Handles one event; `false`: the stream is over.
async fn handle<P: Protocol>(p: &mut P, event: Event<P::Request>) -> bool {
    let id = p.base().guard.id;
    let failed = match event {
        Event::Request(Some(Ok(req))) => match p.on_request(req).await {
            Ok(()) => return true,
            Err(status) => status,
        },
        // A malformed request ends the stream with its status (INTERNAL, OUT_OF_RANGE); a
        // client that reset the stream no longer reads it.
        Event::Request(Some(Err(e))) => {
            tracing::debug!(stream = id, error = %e, "xDS stream error");
            e
        }
        Event::Request(None) | Event::Changed(false) => return false,
        Event::Changed(true) => return p.push_all().await.is_ok(),
    };
    let _ = p.base().tx.send(Err(Box::new(failed))).await;
    false
}

/// Serves one stream until the client goes away: requests and snapshot changes, in order.
///
/// One task per subscriber waits here, so what lives across its await points is kept small:
/// the protocol state, the request stream and the wait. Handling an event (a request is
/// ~1 KB inline, a handler's state more) is boxed and lives only while it runs; inline, every
/// idle task was as large as the largest of them (1.9 KB rather than ~0.5 KB).
pub(crate) async fn drive<P, S>(mut p: P, mut requests: S)
where
    P: Protocol,
    S: Stream<Item = Result<P::Request, Status>> + Unpin + Send,
{
    loop {
        let event = next_event(&mut p, &mut requests).await;
        if !Box::pin(handle(&mut p, event)).await {
            break;
        }
    }
}

//! The HTTP/1.1 keep-alive pool against raw loopback peers that misbehave on purpose: a peer
//! that closes an idle connection, and a response body the caller drops half way.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{manager, send, Opts};
use http::Request;
use mesh_core::extensions::TargetCluster;
use mesh_core::{body, Cluster, ClusterLoadAssignment};
use mesh_lb::LoadBalance;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::Service;

/// How the raw peer answers a connection, by its number (0 is the first).
#[derive(Clone, Copy)]
enum Peer {
    /// One response (body: the connection's number), then close the connection.
    AnswerThenClose,
    /// Connection 0 gets a response head promising 10 bytes and only 5 of them, and is held
    /// open; later ones are answered in full and kept alive.
    FirstBodyCutShort,
}

/// Reads one request head (the tests send no bodies); false at EOF.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    }
    true
}

/// A raw HTTP/1.1 peer on loopback; returns its address and its accepted-connection count.
async fn peer(kind: Peer) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                match (kind, n) {
                    (Peer::AnswerThenClose, _) => {
                        if read_head(&mut s).await {
                            let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{n}");
                            let _ = s.write_all(resp.as_bytes()).await;
                        }
                        // Dropped: the peer closes the connection the client keeps alive.
                    }
                    (Peer::FirstBodyCutShort, 0) => {
                        if read_head(&mut s).await {
                            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234";
                            let _ = s.write_all(head).await;
                        }
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    (Peer::FirstBodyCutShort, _) => {
                        while read_head(&mut s).await {
                            let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{n}");
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn upstream(addr: SocketAddr) -> LoadBalance<mesh_lb::Upstream> {
    let mut c = Cluster::new("c");
    c.load_assignment = Some(ClusterLoadAssignment::from_addrs("c", [addr]));
    LoadBalance::upstream(manager(vec![c]))
}

#[tokio::test]
async fn a_connection_the_peer_closed_while_idle_is_not_reused() {
    let (addr, accepted) = peer(Peer::AnswerThenClose).await;
    let svc = upstream(addr);
    for i in 0..3 {
        let (status, conn) =
            tokio::time::timeout(Duration::from_secs(5), send(&svc, "c", Opts::default()))
                .await
                .expect("request timed out")
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            (status, conn),
            (200, i),
            "request {i} on a fresh connection"
        );
        // Let the pooled connection's task read the peer's EOF.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_response_body_dropped_half_way_does_not_return_its_connection() {
    let (addr, accepted) = peer(Peer::FirstBodyCutShort).await;
    let mut svc = upstream(addr);
    let mut req = Request::get("/").body(body::empty()).unwrap();
    req.extensions_mut().insert(TargetCluster::new("c"));
    let fut: mesh_lb::ResponseFuture<mesh_lb::UpstreamFuture> = svc.call(req);
    let resp = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("head timed out")
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The body is 5 bytes short and never ends: drop it unread.
    drop(resp);
    for _ in 0..3 {
        let (status, conn) =
            tokio::time::timeout(Duration::from_secs(5), send(&svc, "c", Opts::default()))
                .await
                .expect(
                    "a request after the dropped body hung: the cut-short connection was reused",
                )
                .unwrap();
        assert_eq!((status, conn), (200, 1), "served by the second connection");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

//! HTTP upgrades (WebSocket and any other `Upgrade` token the listener allows) and CONNECT:
//! the request is routed and balanced like any other, its `Upgrade`/`Connection` headers kept;
//! when the upstream agrees (`101 Switching Protocols`, or a 2xx to CONNECT) both connections
//! are taken over from hyper and relayed both ways until either side ends (or the idle timeout,
//! or the listener's drain deadline).
//!
//! What is not allowed is forwarded as a plain request with the hop-by-hop `Upgrade` removed
//! (the behaviour before upgrades existed, and Envoy's for upgrades it is not configured for).

use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use mesh_core::{Body, HttpProtocolOptions};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{Activity, TrackedIo};
use crate::connect::ConnectTunnel;
use crate::tcp::{pump, Pumped};

/// Bytes buffered per direction of an upgraded relay.
const RELAY_BUFFER: usize = 16 * 1024;

/// An allowed upgrade request on its way upstream.
pub(crate) struct PendingUpgrade {
    downstream: OnUpgrade,
    /// The `Upgrade` header sent (none for CONNECT).
    upgrade: Option<HeaderValue>,
}

/// Takes the upgrade of a request the listener allows (before its hop-by-hop headers are
/// stripped); `None` for any other request.
pub(crate) fn take(
    parts: &mut http::request::Parts,
    options: &HttpProtocolOptions,
) -> Option<PendingUpgrade> {
    if options.upgrades.is_empty() {
        return None;
    }
    let upgrade = if parts.method == Method::CONNECT {
        if !options.allows_upgrade("CONNECT") {
            return None;
        }
        None
    } else {
        let value = parts.headers.get(UPGRADE)?;
        let wants = parts
            .headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        // The first protocol offered names the upgrade (`websocket`).
        let kind = value.to_str().ok()?.split(',').next()?.trim();
        let kind = kind.split('/').next().unwrap_or(kind);
        if !wants || !options.allows_upgrade(kind) {
            return None;
        }
        Some(value.clone())
    };
    let downstream = parts.extensions.remove::<OnUpgrade>()?;
    Some(PendingUpgrade {
        downstream,
        upgrade,
    })
}

impl PendingUpgrade {
    /// Puts the upgrade headers back on the request after the hop-by-hop strip.
    pub(crate) fn restore_request(&self, headers: &mut HeaderMap) {
        if let Some(u) = &self.upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, u.clone());
        }
    }

    /// Whether the upstream agreed; if so, the relay to start once the response is final.
    pub(crate) fn accept(self, resp: &mut Response<Body>) -> Option<UpgradedRelay> {
        // A CONNECT terminated here: the response carries the upstream connection itself.
        if self.upgrade.is_none() {
            if let Some(tunnel) = resp.extensions_mut().remove::<ConnectTunnel>() {
                return Some(UpgradedRelay {
                    downstream: self.downstream,
                    upstream: UpstreamSide::Tcp(tunnel.take()?),
                    upgrade: None,
                    connect: true,
                });
            }
        }
        let agreed = match self.upgrade {
            Some(_) => resp.status() == StatusCode::SWITCHING_PROTOCOLS,
            None => resp.status().is_success(),
        };
        if !agreed {
            return None;
        }
        let upstream = resp.extensions_mut().remove::<OnUpgrade>()?;
        Some(UpgradedRelay {
            downstream: self.downstream,
            upstream: UpstreamSide::Upgraded(upstream),
            upgrade: resp.headers().get(UPGRADE).cloned(),
            connect: self.upgrade.is_none(),
        })
    }
}

/// The upstream side of a relay.
enum UpstreamSide {
    /// The upstream's own upgraded HTTP connection (101, or 2xx to a proxied CONNECT).
    Upgraded(OnUpgrade),
    /// A raw TCP connection opened for a terminated CONNECT.
    Tcp(TcpStream),
}

/// Both sides of an agreed upgrade, to be relayed.
pub(crate) struct UpgradedRelay {
    downstream: OnUpgrade,
    upstream: UpstreamSide,
    upgrade: Option<HeaderValue>,
    connect: bool,
}

impl UpgradedRelay {
    /// Puts the upgrade headers back on the response (after the hop-by-hop strip) and starts
    /// the relay under `owner`. hyper hands over the downstream connection once it has written
    /// this response.
    pub(crate) fn start(self, resp: &mut Response<Body>, owner: &UpgradeRelays) {
        if !self.connect {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(u) = &self.upgrade {
                resp.headers_mut().insert(UPGRADE, u.clone());
            }
        }
        let stop = owner.stop.clone();
        let idle = owner.idle;
        owner.tracker.spawn(async move {
            let down = match self.downstream.await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed downstream");
                    return;
                }
            };
            match self.upstream {
                UpstreamSide::Upgraded(up) => match up.await {
                    Ok(up) => relay(down, TokioIo::new(up), stop, idle).await,
                    Err(e) => tracing::debug!(error = %e, "upgrade failed upstream"),
                },
                UpstreamSide::Tcp(up) => relay(down, up, stop, idle).await,
            }
        });
    }
}

/// Relays the upgraded downstream connection and `up` until either ends, `idle` passes without
/// bytes, or `stop` (the drain deadline) comes.
async fn relay<U>(down: Upgraded, mut up: U, stop: CancellationToken, idle: Duration)
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut down = TrackedIo::opaque(TokioIo::new(down), Arc::clone(&activity));
    let copy =
        tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, RELAY_BUFFER, RELAY_BUFFER);
    tokio::select! {
        () = stop.cancelled() => tracing::debug!("drain deadline: closing an upgraded connection"),
        ended = pump(copy, &activity, idle) => match ended {
            Pumped::Done(Err(e)) => tracing::debug!(error = %e, "upgraded relay ended with an error"),
            Pumped::Done(Ok(_)) => {}
            Pumped::Idle => tracing::debug!("idle timeout: closing an upgraded connection"),
        },
    }
}

/// The owner of a listener's upgraded relays: they outlive the HTTP connection they came from
/// (hyper hands the socket over), so the listener keeps them here and ends them at its drain
/// deadline.
#[derive(Clone, Debug)]
pub(crate) struct UpgradeRelays {
    tracker: TaskTracker,
    stop: CancellationToken,
    idle: Duration,
}

impl UpgradeRelays {
    /// Relays closed after `idle` without bytes moving.
    pub(crate) fn new(idle: Duration) -> Self {
        Self {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            idle,
        }
    }

    /// Waits for the relays to end until `deadline`, then ends the rest.
    pub(crate) async fn drain(&self, deadline: tokio::time::Instant) {
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            self.stop.cancel();
            self.tracker.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::request::Builder) -> http::request::Parts {
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        // What hyper's HTTP/1 server inserts for a request that asks to upgrade.
        parts
            .extensions
            .insert(hyper::upgrade::on(http::Request::new(
                http_body_util::Empty::<bytes::Bytes>::new(),
            )));
        parts
    }

    fn ws() -> http::request::Builder {
        http::Request::get("/chat")
            .header(CONNECTION, "keep-alive, Upgrade")
            .header(UPGRADE, "websocket")
    }

    #[test]
    fn only_allowed_upgrades_are_taken() {
        let mut allowed = HttpProtocolOptions::default();
        assert!(take(&mut parts(ws()), &allowed).is_none(), "none allowed");
        allowed.upgrades = vec!["websocket".into()];
        let pending = take(&mut parts(ws()), &allowed).expect("websocket allowed");
        let mut h = HeaderMap::new();
        pending.restore_request(&mut h);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
        // Another protocol, an Upgrade without `Connection: upgrade`, CONNECT not allowed.
        let h2c = http::Request::get("/")
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "h2c");
        assert!(take(&mut parts(h2c), &allowed).is_none());
        let bare = http::Request::get("/").header(UPGRADE, "websocket");
        assert!(take(&mut parts(bare), &allowed).is_none());
        let connect = http::Request::connect("db:5432");
        assert!(take(&mut parts(connect), &allowed).is_none());
        allowed.upgrades.push("CONNECT".into());
        let connect = http::Request::connect("db:5432");
        assert!(take(&mut parts(connect), &allowed).is_some());
    }

    #[test]
    fn only_an_agreeing_response_starts_a_relay() {
        let allowed = HttpProtocolOptions {
            upgrades: vec!["websocket".into()],
            ..Default::default()
        };
        let with_upgrade = |status: u16| {
            let mut r = Response::builder()
                .status(status)
                .body(mesh_core::body::empty())
                .unwrap();
            r.extensions_mut()
                .insert(hyper::upgrade::on(http::Request::new(
                    http_body_util::Empty::<bytes::Bytes>::new(),
                )));
            r
        };
        let pending = take(&mut parts(ws()), &allowed).unwrap();
        assert!(pending.accept(&mut with_upgrade(200)).is_none());
        let pending = take(&mut parts(ws()), &allowed).unwrap();
        assert!(pending.accept(&mut with_upgrade(101)).is_some());
    }
}

//! The tonic driver: opens the ADS stream, pumps requests from and responses into [`AdsState`],
//! reconnects with capped exponential backoff and jitter across the address list, re-requests on
//! a timer, holds back repeated NACKs, and publishes status, readiness and the persisted config.

use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::{Channel, Endpoint};

use super::persist::{self, Persisted};
use super::refresh::Refresh;
use super::state::{AdsState, Outbound, Outgoing};
use super::{subscribed_type, AdsMode, ConnectionState, ResourceType, XdsStatus};
use crate::tls::error_chain;

/// How the driver behaves (the builder's settings).
#[derive(Debug, Clone)]
pub(crate) struct DriverConfig {
    pub(crate) addresses: Vec<String>,
    pub(crate) user_agent: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) persist: Option<PathBuf>,
    pub(crate) max_message_bytes: usize,
    /// TLS to the control plane (the addresses are `https://`).
    pub(crate) tls: Option<tonic::transport::ClientTlsConfig>,
}

/// Where the driver publishes what the client handle reads.
pub(crate) struct Outputs {
    pub(crate) status: watch::Sender<XdsStatus>,
    pub(crate) ready: watch::Sender<bool>,
}

/// Runs until `shutdown` flips (or its sender is dropped).
pub(crate) async fn run(
    mut state: AdsState,
    cfg: DriverConfig,
    out: Outputs,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connects = 0u64;
    let mut failures = 0u32;
    let mut index = 0usize;
    let persist_tx = cfg.persist.clone().map(|path| {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(write_persisted(path, rx));
        tx
    });
    publish(&state, &out, ConnectionState::Idle, connects);
    loop {
        let addr = cfg.addresses[index % cfg.addresses.len()].clone();
        publish(
            &state,
            &out,
            ConnectionState::Connecting(addr.clone()),
            connects,
        );
        let mut stream = Stream {
            state: &mut state,
            cfg: &cfg,
            out: &out,
            connects: &mut connects,
            persist: persist_tx.as_ref(),
            healthy: false,
        };
        let error = tokio::select! {
            e = stream.run(&addr) => e,
            _ = shutdown.changed() => break,
        };
        if stream.healthy {
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
            // Fail over: the next attempt goes to the next control plane of the list.
            index = index.wrapping_add(1);
        }
        tracing::warn!(control_plane = %addr, %error, "ADS stream ended; serving the last good config");
        publish(&state, &out, ConnectionState::Backoff { error }, connects);
        let delay = backoff(cfg.backoff_base, cfg.backoff_max, failures);
        tokio::select! {
            _ = sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
    }
    publish(&state, &out, ConnectionState::Stopped, connects);
}

/// Writes the latest accepted config off the stream's path: while one write runs, newer
/// snapshots replace each other and only the last is written next. Ends with the driver.
async fn write_persisted(path: PathBuf, mut rx: watch::Receiver<Option<Persisted>>) {
    while rx.changed().await.is_ok() {
        let Some(snapshot) = rx.borrow_and_update().clone() else {
            continue;
        };
        let path = path.clone();
        match tokio::task::spawn_blocking(move || persist::store(&path, &snapshot)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not persist the xDS config"),
            Err(e) => tracing::warn!(error = %e, "could not persist the xDS config"),
        }
    }
}

/// Capped exponential backoff with jitter in [d/2, d], so that a fleet restarting together
/// spreads its reconnects but never retries at once.
pub(crate) fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.min(16)).min(max);
    let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

fn publish(state: &AdsState, out: &Outputs, connection: ConnectionState, connects: u64) {
    let mut status = state.status();
    status.connection = connection;
    status.connects = connects;
    let ready = status.ready;
    out.status.send_replace(status);
    out.ready
        .send_if_modified(|r| std::mem::replace(r, ready) != ready);
}

enum Tx {
    Sotw(mpsc::Sender<DiscoveryRequest>),
    Delta(mpsc::Sender<DeltaDiscoveryRequest>),
}

enum Rx {
    Sotw(Streaming<DiscoveryResponse>),
    Delta(Streaming<DeltaDiscoveryResponse>),
}

enum Inbound {
    Sotw(DiscoveryResponse),
    Delta(DeltaDiscoveryResponse),
}

impl Tx {
    async fn send(&self, req: Outbound) -> Result<(), String> {
        let sent = match (self, req) {
            (Tx::Sotw(tx), Outbound::Sotw(r)) => tx.send(r).await.is_ok(),
            (Tx::Delta(tx), Outbound::Delta(r)) => tx.send(r).await.is_ok(),
            _ => return Ok(()), // a request of the other variant cannot occur
        };
        if sent {
            Ok(())
        } else {
            Err("the request stream closed".into())
        }
    }
}

impl Rx {
    async fn next(&mut self) -> Result<Option<Inbound>, tonic::Status> {
        Ok(match self {
            Rx::Sotw(s) => s.message().await?.map(Inbound::Sotw),
            Rx::Delta(s) => s.message().await?.map(Inbound::Delta),
        })
    }
}

/// One stream's life.
struct Stream<'a> {
    state: &'a mut AdsState,
    cfg: &'a DriverConfig,
    out: &'a Outputs,
    connects: &'a mut u64,
    persist: Option<&'a watch::Sender<Option<Persisted>>>,
    /// Whether a response arrived (the backoff restarts from its base after a healthy stream).
    healthy: bool,
}

type AdsClient = AggregatedDiscoveryServiceClient<Channel>;

impl Stream<'_> {
    async fn connect(&self, addr: &str) -> Result<AdsClient, String> {
        let mut endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|e| format!("bad control-plane address {addr:?}: {e}"))?
            .connect_timeout(self.cfg.connect_timeout)
            .user_agent(self.cfg.user_agent.clone())
            .map_err(|e| format!("bad user agent: {e}"))?;
        if let Some(tls) = &self.cfg.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS to {addr}: {}", error_chain(&e)))?;
        }
        // The causes matter here: "transport error" alone hides a refused certificate.
        let channel: Channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect to {addr}: {}", error_chain(&e)))?;
        Ok(AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.cfg.max_message_bytes)
            .max_encoding_message_size(self.cfg.max_message_bytes))
    }

    /// Opens an ADS stream on `client` whose first requests are `first`. They are queued before
    /// the call, so a server that sends its response headers only with its first response (as
    /// grpc-go does) cannot leave both sides waiting.
    async fn open_stream(
        &self,
        client: &mut AdsClient,
        first: Vec<Outgoing>,
    ) -> Result<(Tx, Rx), String> {
        const QUEUE: usize = 64;
        Ok(match self.state.mode {
            AdsMode::Sotw => {
                let (tx, rx) = mpsc::channel(QUEUE.max(first.len()));
                for o in first {
                    if let Outbound::Sotw(r) = o.request {
                        let _ = tx.try_send(r);
                    }
                }
                let resp = client
                    .stream_aggregated_resources(ReceiverStream::new(rx))
                    .await
                    .map_err(|e| format!("open stream: {}", error_chain(&e)))?;
                (Tx::Sotw(tx), Rx::Sotw(resp.into_inner()))
            }
            AdsMode::Delta => {
                let (tx, rx) = mpsc::channel(QUEUE.max(first.len()));
                for o in first {
                    if let Outbound::Delta(r) = o.request {
                        let _ = tx.try_send(r);
                    }
                }
                let resp = client
                    .delta_aggregated_resources(ReceiverStream::new(rx))
                    .await
                    .map_err(|e| format!("open stream: {}", error_chain(&e)))?;
                (Tx::Delta(tx), Rx::Delta(resp.into_inner()))
            }
        })
    }

    /// Runs the stream until it fails; returns why.
    async fn run(&mut self, addr: &str) -> String {
        match self.pump(addr).await {
            Ok(()) => "the control plane closed the stream".into(),
            Err(e) => e,
        }
    }

    async fn pump(&mut self, addr: &str) -> Result<(), String> {
        let mut client = self.connect(addr).await?;
        let first = self.state.on_connect();
        let (mut tx, mut rx) = self.open_stream(&mut client, first).await?;
        *self.connects += 1;
        publish(
            self.state,
            self.out,
            ConnectionState::Connected(addr.into()),
            *self.connects,
        );
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        // Held NACKs, per type: when to send, and how many were held in a row (their backoff).
        let mut held: [Option<(Instant, Outbound)>; ResourceType::ALL.len()] = Default::default();
        let mut holds = [0u32; ResourceType::ALL.len()];
        loop {
            let next_held = held
                .iter()
                .flatten()
                .map(|(at, _)| *at)
                .min()
                .unwrap_or(far);
            tokio::select! {
                msg = rx.next() => {
                    let Some(msg) = msg.map_err(|s| format!("stream error: {}", error_chain(&s)))? else {
                        return Ok(());
                    };
                    self.healthy = true;
                    let (ty, outs) = match msg {
                        Inbound::Sotw(r) => (subscribed_type(&r.type_url), self.state.on_response(r)),
                        Inbound::Delta(r) => (subscribed_type(&r.type_url), self.state.on_delta_response(r)),
                    };
                    if let Some(ty) = ty {
                        held[ty.index()] = None; // a newer response supersedes a held NACK
                    }
                    for o in outs {
                        match (o.hold, ty) {
                            (true, Some(ty)) => {
                                let i = ty.index();
                                let delay = backoff(self.cfg.backoff_base * 2, self.cfg.backoff_max, holds[i]);
                                holds[i] = holds[i].saturating_add(1);
                                held[i] = Some((Instant::now() + delay, o.request));
                            }
                            (_, ty) => {
                                if let Some(ty) = ty.filter(|t| self.state.ty(*t).rejected.is_none()) {
                                    holds[ty.index()] = 0;
                                }
                                tx.send(o.request).await?;
                            }
                        }
                    }
                    publish(self.state, self.out, ConnectionState::Connected(addr.into()), *self.connects);
                    self.persist();
                }
                _ = sleep_until(self.state.refresh_deadline().unwrap_or(far)) => {
                    match self.state.on_refresh_tick(Instant::now()) {
                        Some(Refresh::Send(outs)) => {
                            for o in outs {
                                tx.send(o.request).await?;
                            }
                        }
                        Some(Refresh::NewStream(outs)) => {
                            // Make before break: the old stream serves until the new one is
                            // open. A connection that cannot open one in time is dead: reconnect.
                            let opened = tokio::time::timeout(
                                self.cfg.connect_timeout,
                                self.open_stream(&mut client, outs),
                            )
                            .await
                            .map_err(|_| "refresh: no new stream in time".to_string())?
                            .map_err(|e| format!("refresh: {e}"))?;
                            (tx, rx) = opened;
                            // Held NACKs answer the old stream's nonces.
                            held = Default::default();
                            holds = [0; ResourceType::ALL.len()];
                        }
                        None => {}
                    }
                    publish(self.state, self.out, ConnectionState::Connected(addr.into()), *self.connects);
                }
                _ = sleep_until(next_held) => {
                    let now = Instant::now();
                    for slot in &mut held {
                        if slot.as_ref().is_some_and(|(at, _)| *at <= now) {
                            if let Some((_, req)) = slot.take() {
                                tx.send(req).await?;
                            }
                        }
                    }
                }
            }
        }
    }

    fn persist(&mut self) {
        if std::mem::take(&mut self.state.dirty) {
            if let Some(tx) = self.persist {
                // Cheap: the snapshot shares the resource maps. The writer task coalesces.
                tx.send_replace(Some(Persisted::of(self.state)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_but_never_zero() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for failures in 0..40 {
            let expected = (base * 2u32.pow(failures.min(16))).min(max);
            for _ in 0..20 {
                let d = backoff(base, max, failures);
                assert!(
                    d >= expected / 2 && d <= expected,
                    "{failures}: {d:?} vs {expected:?}"
                );
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(base, max, 5)).collect();
        assert!(spread.len() > 5, "jittered: {spread:?}");
        assert!(backoff(Duration::ZERO, Duration::ZERO, 3) <= Duration::from_millis(1));
    }
}

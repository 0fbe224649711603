//! The periodic re-request (the pull beside the push), timed by the state machine so that it is
//! tested on tokio's paused clock without sockets.
//!
//! Its point is to recover from a stream that is silently stale: a control plane that forgot a
//! push, or a proxy in between that lost one. How it re-requests depends on the variant:
//!
//! - state of the world: every subscription again on the same stream, with an empty
//!   `version_info`, so the control plane answers with its full current state;
//! - delta: a delta stream takes `initial_resource_versions` only on its first request of a
//!   type, so the client re-subscribes on a new stream (of the same connection) with the names
//!   and versions it holds; the control plane sends only what differs, and the old stream is
//!   dropped once the new one is open (make before break).

use std::time::Duration;

use tokio::time::Instant;

use super::state::{AdsState, Outgoing};
use super::AdsMode;

/// What a due refresh asks of the transport.
#[derive(Debug, Clone, PartialEq)]
pub enum Refresh {
    /// Send these on the current stream (SotW).
    Send(Vec<Outgoing>),
    /// Open a new stream, send these on it first, then drop the current stream (delta).
    NewStream(Vec<Outgoing>),
}

impl AdsState {
    /// Re-request on this period (`None`: never). Takes effect from the next stream (or
    /// [`on_connect`](Self::on_connect)).
    pub fn set_refresh_interval(&mut self, every: Option<Duration>) {
        self.refresh_every = every.filter(|d| !d.is_zero());
        self.refresh_at = None;
    }

    /// When the next refresh is due, if one is scheduled (it is from each stream's start).
    pub fn refresh_deadline(&self) -> Option<Instant> {
        self.refresh_at
    }

    /// Starts the refresh period over (a stream opened).
    pub(crate) fn schedule_refresh(&mut self) {
        self.refresh_at = self.refresh_every.map(|d| Instant::now() + d);
    }

    /// The timer fired at `now`: the refresh to do if it is due (and the next one scheduled).
    pub fn on_refresh_tick(&mut self, now: Instant) -> Option<Refresh> {
        if self.refresh_at.is_none_or(|at| now < at) {
            return None;
        }
        let requests = self.refresh();
        self.refresh_at = self.refresh_every.map(|d| now + d);
        Some(match self.mode {
            AdsMode::Sotw => Refresh::Send(requests),
            AdsMode::Delta => Refresh::NewStream(requests),
        })
    }

    /// The re-request itself, due or not (counted in [`XdsStatus::refreshes`]).
    ///
    /// SotW: a request with an empty version for every subscription, to send on the current
    /// stream. Delta: the subscription requests of a new stream, with `initial_resource_versions`
    /// (see [`Refresh::NewStream`]).
    ///
    /// [`XdsStatus::refreshes`]: super::XdsStatus::refreshes
    pub fn refresh(&mut self) -> Vec<Outgoing> {
        self.refreshes += 1;
        match self.mode {
            AdsMode::Sotw => self.sotw_refresh(),
            AdsMode::Delta => self.subscribe_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
    use mesh_core::{Cluster, Discovery};

    use super::*;
    use crate::client::{Outbound, ResourceType, XdsClient};
    use crate::convert::encode;

    fn eds(name: &str) -> Cluster {
        let mut c = Cluster::new(name);
        c.discovery = Discovery::Eds;
        c
    }

    fn state(mode: AdsMode, every: u64) -> AdsState {
        XdsClient::builder()
            .mode(mode)
            .refresh_interval(Duration::from_secs(every))
            .into_state()
    }

    #[tokio::test(start_paused = true)]
    async fn delta_refresh_resubscribes_on_a_new_stream_with_the_versions_held() {
        let mut s = state(AdsMode::Delta, 30);
        assert_eq!(s.refresh_deadline(), None, "nothing before a stream");
        s.on_connect();
        let first = s.refresh_deadline().unwrap();
        assert_eq!(first, Instant::now() + Duration::from_secs(30));
        s.on_delta_response(DeltaDiscoveryResponse {
            type_url: ResourceType::Cluster.type_url().into(),
            nonce: "d1".into(),
            resources: vec![Resource {
                name: "a".into(),
                version: "7".into(),
                resource: Some(encode(&eds("a"))),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(s.on_refresh_tick(Instant::now()), None, "not due yet");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(s.on_refresh_tick(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let Some(Refresh::NewStream(out)) = s.on_refresh_tick(Instant::now()) else {
            panic!("a delta refresh opens a new stream");
        };
        let reqs: Vec<_> = out
            .into_iter()
            .map(|o| match o.request {
                Outbound::Delta(r) => r,
                other => panic!("{other:?}"),
            })
            .collect();
        // CDS (wildcard, with the version of a), EDS for a, LDS: as on a reconnect.
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].type_url, ResourceType::Cluster.type_url());
        assert_eq!(reqs[0].initial_resource_versions["a"], "7");
        assert!(reqs[0].response_nonce.is_empty());
        assert_eq!(reqs[1].resource_names_subscribe, ["a"]);
        assert_eq!(s.status().refreshes, 1);
        assert_eq!(
            s.refresh_deadline(),
            Some(first + Duration::from_secs(30)),
            "the next period"
        );
        assert_eq!(s.on_refresh_tick(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn sotw_refresh_stays_on_the_stream_and_none_is_scheduled_without_an_interval() {
        let mut s = state(AdsMode::Sotw, 5);
        s.on_connect();
        tokio::time::advance(Duration::from_secs(5)).await;
        let Some(Refresh::Send(out)) = s.on_refresh_tick(Instant::now()) else {
            panic!("a SotW refresh stays on the stream");
        };
        assert_eq!(out.len(), 2, "CDS and LDS");
        assert!(out.iter().all(|o| matches!(
            &o.request,
            Outbound::Sotw(r) if r.version_info.is_empty()
        )));
        assert_eq!(s.status().refreshes, 1);

        let mut never = XdsClient::builder().mode(AdsMode::Delta).into_state();
        never.on_connect();
        assert_eq!(never.refresh_deadline(), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(never.on_refresh_tick(Instant::now()), None);
        assert_eq!(never.status().refreshes, 0);
    }
}

//! The chaos suite (issue #18 item 5): real processes — the `mesh-control-plane` and
//! `mesh-sidecar` binaries, real etcd (one member, and a 3-member cluster on loopback), tiny
//! hyper apps — faulted while load runs throughout, every request's outcome counted:
//!
//! - `control_plane`: kill -9 of the control plane under load, restarted: zero failed requests,
//!   the sidecar reconnects and converges to the control plane's versions;
//! - `config_edits`: 100 mesh-file edits in a row under load: zero failed requests;
//! - `sidecar_sigterm`: SIGTERM of a sidecar under load, clients retrying only refused
//!   connects on another sidecar: zero lost in-flight requests;
//! - `slow_endpoints`: a stalled app and a black-holed endpoint: the route time-out fires,
//!   outlier detection ejects both, traffic moves on, the sidecar's memory stays bounded;
//! - `etcd`: etcd restarted, and a 3-member cluster losing a member, then the leader:
//!   registrations survive, the control plane keeps serving its last snapshot and follows new
//!   registrations once quorum is back.
//!
//! Scale: `MESH_CHAOS=long` (what `./scripts/chaos` sets) runs each scenario for minutes;
//! otherwise each takes a few seconds (the form `./scripts/test` runs). Every scenario prints
//! a `CHAOS [...]` line with its counts (`--no-capture` shows them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod app;
mod config_edits;
mod control_plane;
mod etcd;
mod load;
mod sidecar_sigterm;
mod slow_endpoints;
mod support;

use std::net::SocketAddr;

/// The mesh file of the scenarios: one service `app` on `endpoints` (each with an `edit`
/// metadata value, so that every `edit` is a new EDS version), `service_extra` YAML lines
/// under the service, and the client `nodes`.
pub fn mesh_file(
    nodes: &[&support::NodePorts],
    endpoints: &[SocketAddr],
    service_extra: &str,
    edit: u32,
) -> String {
    let mut s = String::from("services:\n  - name: app\n    endpoints:\n");
    for e in endpoints {
        s.push_str(&format!(
            "      - {{ address: {e}, metadata: {{ edit: \"{edit}\" }} }}\n"
        ));
    }
    s.push_str(service_extra);
    s.push_str("nodes:\n");
    for n in nodes {
        s.push_str(&n.yaml());
    }
    s
}

/// Waits (at most 20 s) until `GET /` with `Host: host` through `outbound` answers 200.
pub fn wait_routable(outbound: SocketAddr, host: &str) -> bool {
    mesh_testkit::wait_for(
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(50),
        || {
            let r =
                mesh_testkit::http_request(outbound, "GET", "/", &[("Host", host)], b"").ok()?;
            (r.status == 200).then_some(())
        },
    )
    .is_some()
}

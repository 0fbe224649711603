//! A real 3-member etcd cluster on loopback, for tests that lose members and quorum.

use crate::etcd::{wait_member_healthy, HEALTH_TIMEOUT};
use crate::process::Managed;
use crate::{free_ports, http_request};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// One member: its ports and, while it runs, its process.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Managed>,
}

/// A running etcd cluster of `n` members on free loopback ports, data in a temp dir; every
/// member is killed on drop. Members can be killed (SIGKILL) and restarted with their data, so
/// a test can take away one member, then quorum, and give them back.
pub struct EtcdCluster {
    bin: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts `n` members (3 for a cluster that survives one loss) and waits (at most 30 s)
    /// until every member's `/health` answers 200.
    ///
    /// Errors if etcd is not found (check [`crate::require_etcd`] first), a member exits early,
    /// or the cluster is not healthy in time; the error has the member's log.
    pub fn start(n: usize) -> Result<EtcdCluster> {
        let bin = crate::etcd_bin().context("etcd not found; run ./scripts/test")?;
        let dir = tempfile::Builder::new()
            .prefix("mesh-etcd-cluster-")
            .tempdir()?;
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: SocketAddr::from((Ipv4Addr::LOCALHOST, ports[2 * i])),
                peer: SocketAddr::from((Ipv4Addr::LOCALHOST, ports[2 * i + 1])),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            bin,
            members,
            initial_cluster,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    /// The client endpoints, `127.0.0.1:<port>` each, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }

    /// Member `i`'s client URL, `http://127.0.0.1:<port>`.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://{}", self.members[i].client)
    }

    /// The index of the member that is the raft leader now, asked of the running members
    /// (`/v3/maintenance/status`); `None` while there is none (no quorum, or an election).
    pub fn leader(&mut self) -> Option<usize> {
        let mut ids = vec![None; self.members.len()];
        let mut leader = None;
        for (i, m) in self.members.iter_mut().enumerate() {
            if m.child.as_mut().is_none_or(|c| c.check_alive().is_err()) {
                continue;
            }
            let Ok(resp) = http_request(m.client, "POST", "/v3/maintenance/status", &[], b"{}")
            else {
                continue;
            };
            let text = resp.text();
            ids[i] = json_string(&text, "member_id");
            if let Some(l) = json_string(&text, "leader") {
                leader = Some(l);
            }
        }
        let leader = leader?;
        ids.iter()
            .position(|id| id.as_deref() == Some(leader.as_str()))
    }

    /// Kills member `i` (SIGKILL, like a crash) and waits for it to exit; its data stays.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill();
        }
    }

    /// Starts member `i` again with its data (no-op start if it runs) and waits (at most 30 s)
    /// for its `/health`, which needs quorum: restart enough members at once with
    /// [`EtcdCluster::restart_all_stopped`].
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.members[i].child.is_none() {
            self.spawn(i)?;
        }
        self.wait_healthy(i)
    }

    /// Starts every stopped member, then waits until all are healthy (quorum back).
    pub fn restart_all_stopped(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i)?;
            }
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i)?;
        }
        Ok(())
    }

    /// Everything member `i` logged so far, across restarts.
    pub fn logs(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        // A member that has data rejoins; the cluster flags are then ignored by etcd.
        let state = if data.exists() { "existing" } else { "new" };
        let child = spawn_member(
            &self.bin,
            &data,
            &self.log_path(i),
            MemberArgs {
                name: &m.name,
                client: m.client,
                peer: m.peer,
                initial_cluster: &self.initial_cluster,
                state,
            },
        )?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self, i: usize) -> Result<()> {
        let member = &mut self.members[i];
        let client = member.client;
        if let Err(last_err) =
            wait_member_healthy(member.child.as_mut(), client, Duration::from_millis(100))?
        {
            bail!(
                "etcd member {i} not healthy after {HEALTH_TIMEOUT:?} ({last_err}); log:\n{}",
                self.logs(i)
            );
        }
        Ok(())
    }
}

struct MemberArgs<'a> {
    name: &'a str,
    client: SocketAddr,
    peer: SocketAddr,
    initial_cluster: &'a str,
    state: &'a str,
}

fn spawn_member(bin: &Path, data: &Path, log: &Path, a: MemberArgs<'_>) -> Result<Managed> {
    let client_url = format!("http://{}", a.client);
    let peer_url = format!("http://{}", a.peer);
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--name={}", a.name))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster={}", a.initial_cluster))
        .arg(format!("--initial-cluster-state={}", a.state))
        .arg("--initial-cluster-token=mesh-test")
        // Loopback: short heartbeats so that elections after a kill take well under a second.
        .args(["--heartbeat-interval=50", "--election-timeout=500"])
        .args(["--logger=zap", "--log-outputs=stderr"]);
    crate::etcd::unsupported_arch_env(&mut cmd);
    Managed::spawn("etcd", cmd, log)
}

/// The string value of the first `"key":"value"` in `json` (etcd's gateway prints uint64 ids
/// as strings); enough for the two fields read here without a JSON dependency.
fn json_string(json: &str, key: &str) -> Option<String> {
    let at = json.find(&format!("\"{key}\""))?;
    let rest = &json[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_string_reads_etcd_status_ids() {
        let s = r#"{"header":{"cluster_id":"1","member_id":"42","revision":"3"},"leader":"42"}"#;
        assert_eq!(super::json_string(s, "member_id").as_deref(), Some("42"));
        assert_eq!(super::json_string(s, "leader").as_deref(), Some("42"));
        assert_eq!(super::json_string(s, "raftTerm"), None);
    }
}

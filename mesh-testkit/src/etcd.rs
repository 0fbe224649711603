//! A real single-member etcd for a test.

use crate::process::Managed;
use crate::{free_ports, http_get, wait_for};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// How long a start or restart waits for `/health`.
pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// A running single-member etcd on loopback, with its data in a temp dir;
/// killed on drop. [`EtcdProcess::restart`] keeps the data and the ports.
pub struct EtcdProcess {
    bin: PathBuf,
    child: Managed,
    client: SocketAddr,
    peer: SocketAddr,
    dir: TempDir,
}

impl EtcdProcess {
    /// Starts etcd on free loopback client and peer ports and waits (at most
    /// 30 s) until `/health` answers 200.
    ///
    /// Errors if etcd is not found (check [`crate::require_etcd`] first),
    /// exits early, or is not healthy in time; the error has its log.
    pub fn start() -> Result<EtcdProcess> {
        let bin = crate::etcd_bin().context("etcd not found; run ./scripts/test")?;
        let dir = tempfile::Builder::new().prefix("mesh-etcd-").tempdir()?;
        let ports = free_ports(2);
        let client = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0]));
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[1]));
        let child = spawn(&bin, dir.path(), client, peer)?;
        let mut etcd = EtcdProcess {
            bin,
            child,
            client,
            peer,
            dir,
        };
        etcd.wait_healthy()?;
        Ok(etcd)
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// The client endpoint as `127.0.0.1:<port>` (what `etcd_client::Client::connect` takes).
    pub fn endpoint(&self) -> String {
        self.client.to_string()
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client
    }

    /// Kills etcd (SIGKILL, like a crash) and waits for it to exit; the data
    /// dir stays. No-op when already stopped.
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// Stops etcd if it runs, starts it again on the same ports with the same
    /// data dir, and waits (at most 30 s) until it is healthy.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.child = spawn(&self.bin, self.dir.path(), self.client, self.peer)?;
        self.wait_healthy()
    }

    /// True while the etcd process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.check_alive().is_ok()
    }

    /// The data dir (inside the temp dir, removed on drop).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything etcd logged so far, across restarts.
    pub fn logs(&self) -> String {
        self.child.logs()
    }

    /// The log file (etcd's stdout and stderr, across restarts).
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    fn wait_healthy(&mut self) -> Result<()> {
        if let Err(last_err) = wait_member_healthy(
            Some(&mut self.child),
            self.client,
            Duration::from_millis(50),
        )? {
            bail!(
                "etcd not healthy after {HEALTH_TIMEOUT:?} ({last_err}); log:\n{}",
                self.child.logs()
            );
        }
        Ok(())
    }
}

/// Waits up to [`HEALTH_TIMEOUT`] for the etcd serving `client` to answer `/health` with 200,
/// polling every `interval`. `Err` when its process (if given) exited; `Ok(Err(last error))`
/// when the time ran out, for the caller to report with its own context and log.
pub(crate) fn wait_member_healthy(
    mut child: Option<&mut Managed>,
    client: SocketAddr,
    interval: Duration,
) -> Result<std::result::Result<(), String>> {
    let mut last_err = String::new();
    let healthy = wait_for(HEALTH_TIMEOUT, interval, || {
        if let Some(child) = child.as_deref_mut() {
            if let Err(e) = child.check_alive() {
                return Some(Err(e));
            }
        }
        match http_get(client, "/health") {
            Ok((200, _)) => Some(Ok(())),
            Ok((status, body)) => {
                last_err = format!("/health answered {status}: {}", body.trim());
                None
            }
            Err(e) => {
                last_err = format!("{e:#}");
                None
            }
        }
    });
    match healthy {
        Some(result) => result.map(Ok),
        None => Ok(Err(last_err)),
    }
}

fn spawn(bin: &Path, dir: &Path, client: SocketAddr, peer: SocketAddr) -> Result<Managed> {
    let client_url = format!("http://{client}");
    let peer_url = format!("http://{peer}");
    let mut cmd = Command::new(bin);
    cmd.arg("--name=default")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .args(["--logger=zap", "--log-outputs=stderr"]);
    unsupported_arch_env(&mut cmd);
    Managed::spawn("etcd", cmd, &dir.join("etcd.log"))
}

/// etcd 3.4 refuses to run on anything but amd64 unless told to.
pub(crate) fn unsupported_arch_env(cmd: &mut Command) {
    if std::env::var_os("ETCD_UNSUPPORTED_ARCH").is_none() {
        match std::env::consts::ARCH {
            "x86_64" => {}
            "aarch64" => {
                cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
            }
            other => {
                cmd.env("ETCD_UNSUPPORTED_ARCH", other);
            }
        }
    }
}

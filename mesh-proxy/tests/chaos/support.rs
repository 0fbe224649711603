//! The parts every scenario uses: real processes (control plane, sidecars) with kill-on-drop
//! guards, node ports and the mesh file, convergence and memory probes, and the scale knob.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_testkit::{free_ports, http_get, wait_for};

/// `MESH_CHAOS=long` runs each scenario for minutes (`./scripts/chaos`); anything else is the
/// short form that fits CI (a few seconds a scenario).
pub fn long() -> bool {
    std::env::var("MESH_CHAOS").is_ok_and(|v| v.eq_ignore_ascii_case("long"))
}

/// `short` in the short form, `long` in the long one.
pub fn scaled(short: Duration, long_form: Duration) -> Duration {
    if long() {
        long_form
    } else {
        short
    }
}

/// Prints a scenario's counts where `--no-capture` and failing runs show them.
pub fn report(scenario: &str, what: &str) {
    let mode = if long() { "long" } else { "short" };
    eprintln!("CHAOS [{scenario}] ({mode}): {what}");
}

/// A loopback address with port `p`.
pub fn lo(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

/// The `mesh-control-plane` binary: `MESH_CONTROL_PLANE_BIN`, else the one cargo built beside
/// this test (`target/<profile>/`; `cargo nextest run --workspace --all-features` and
/// `./scripts/chaos` build it). Skips loudly when missing (fails under `CI=true`).
pub fn control_plane_bin() -> Option<PathBuf> {
    let from_env = std::env::var_os("MESH_CONTROL_PLANE_BIN").map(PathBuf::from);
    let beside = std::env::current_exe().ok().and_then(|exe| {
        // target/<profile>/deps/chaos-<hash> → target/<profile>/mesh-control-plane
        Some(exe.parent()?.parent()?.join("mesh-control-plane"))
    });
    from_env.or(beside).filter(|p| p.is_file()).or_else(|| {
        mesh_testkit::skip_or_fail(
            "mesh-control-plane (cargo build -p mesh-xds --features cli,etcd)",
            "MESH_CONTROL_PLANE_BIN",
        )
    })
}

/// A child process with its output in a log file; SIGKILLed on drop.
pub struct Proc {
    name: String,
    cmd_bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `bin args`, its output appended to `log`.
    pub fn spawn(name: &str, bin: &Path, args: Vec<String>, log: PathBuf) -> Proc {
        let mut p = Proc {
            name: name.to_owned(),
            cmd_bin: bin.to_path_buf(),
            args,
            log,
            child: None,
        };
        p.start();
        p
    }

    /// Starts it again with the same arguments (after [`Proc::kill9`]).
    pub fn start(&mut self) {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(&self.cmd_bin)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn");
        self.child = Some(child);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL, like a crash, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (at most `bound`) for the exit; its exit code (None: signal or
    /// time-out).
    pub fn sigterm_and_wait(&mut self, bound: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let status = wait_for(bound, Duration::from_millis(20), || {
            c.try_wait().ok().flatten()
        });
        if status.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        status.and_then(|s| s.code())
    }

    /// The log so far (for assertion messages).
    pub fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last lines of {} ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("{}", self.logs());
        }
        self.kill9();
    }
}

/// The control plane binary on fixed free ports (so a restart takes the same ones).
pub struct ControlPlane {
    /// The process.
    pub proc: Proc,
    /// Its xDS address.
    pub xds: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
}

impl ControlPlane {
    /// Starts `bin` with `source_args` (`--config F` or `--etcd ..`) and waits for /healthz.
    pub fn start(bin: &Path, dir: &Path, source_args: &[String]) -> ControlPlane {
        let p = free_ports(2);
        let (xds, admin) = (lo(p[0]), lo(p[1]));
        let mut args = source_args.to_vec();
        args.extend([
            "--listen".into(),
            xds.to_string(),
            "--admin".into(),
            admin.to_string(),
            "--poll".into(),
            "20ms".into(),
        ]);
        let proc = Proc::spawn("control plane", bin, args, dir.join("control-plane.log"));
        let cp = ControlPlane { proc, xds, admin };
        cp.wait_up();
        cp
    }

    /// Waits (at most 20 s) for /healthz.
    pub fn wait_up(&self) {
        let admin = self.admin;
        let up = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            matches!(http_get(admin, "/healthz"), Ok((200, _))).then_some(())
        });
        assert!(up.is_some(), "control plane not up\n{}", self.proc.logs());
    }

    /// The versions of `node`'s snapshot, sorted (one per resource type).
    pub fn versions(&self, node: &str) -> Option<Vec<String>> {
        let (_, body) = http_get(self.admin, "/snapshots").ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let n = json["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == node)?;
        let mut v: Vec<String> = n["set"]
            .as_array()?
            .iter()
            .filter_map(|t| t["version"].as_str().map(str::to_owned))
            .collect();
        v.sort();
        Some(v)
    }
}

/// A dynamic `mesh-sidecar` process.
pub struct SidecarProc {
    /// The process.
    pub proc: Proc,
    /// Its admin address.
    pub admin: SocketAddr,
}

impl SidecarProc {
    /// Starts `mesh-sidecar --xds <xds> --node-id <node>` (plus `extra`) and waits for /ready.
    pub fn start(dir: &Path, xds: SocketAddr, node: &str, extra: &[String]) -> SidecarProc {
        let admin = lo(free_ports(1)[0]);
        let mut args = vec![
            "--xds".to_owned(),
            format!("http://{xds}"),
            "--node-id".into(),
            node.into(),
            "--admin".into(),
            admin.to_string(),
        ];
        args.extend_from_slice(extra);
        let bin = Path::new(env!("CARGO_BIN_EXE_mesh-sidecar"));
        let proc = Proc::spawn(node, bin, args, dir.join(format!("{node}.log")));
        let sc = SidecarProc { proc, admin };
        let ready = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
        });
        assert!(ready.is_some(), "sidecar never ready\n{}", sc.proc.logs());
        sc
    }

    /// The `/xds` status: per-type accepted versions (sorted), total ACKs, NACKs, connects.
    /// A type with no version yet is left out: SDS is listed but never answered when no
    /// listener or cluster names a secret, and the control plane's snapshot has no such type.
    pub fn xds(&self) -> Option<XdsView> {
        let (_, body) = http_get(self.admin, "/xds").ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let types = json["types"].as_object()?;
        let mut versions: Vec<String> = types
            .values()
            .filter_map(|t| t["version"].as_str().map(str::to_owned))
            .filter(|v| !v.is_empty())
            .collect();
        versions.sort();
        let sum = |k: &str| types.values().filter_map(|t| t[k].as_u64()).sum();
        Some(XdsView {
            versions,
            acks: sum("acks"),
            nacks: sum("nacks"),
            connects: json["connects"].as_u64().unwrap_or(0),
        })
    }

    /// Waits (at most `bound`) until this sidecar's versions equal the control plane's for
    /// `node`; returns the last views of both for the assertion message.
    pub fn converge(
        &self,
        cp: &ControlPlane,
        node: &str,
        bound: Duration,
    ) -> Result<XdsView, String> {
        let mut last = String::new();
        wait_for(bound, Duration::from_millis(100), || {
            let mine = self.xds()?;
            let theirs = cp.versions(node)?;
            if mine.versions == theirs {
                return Some(mine);
            }
            last = format!("sidecar {:?} vs control plane {theirs:?}", mine.versions);
            None
        })
        .ok_or(last)
    }

    /// The sidecar's resident memory in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        vm_rss_kib(self.proc.pid())
    }
}

/// A process's resident memory in KiB (`VmRSS` of /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What a sidecar's `/xds` says.
#[derive(Debug, Clone)]
pub struct XdsView {
    /// The accepted version of each type, sorted.
    pub versions: Vec<String>,
    /// ACKs over all types.
    pub acks: u64,
    /// NACKs over all types.
    pub nacks: u64,
    /// Connections made to a control plane.
    pub connects: u64,
}

/// A client node's listener ports: outbound (the load's target) and inbound (unused).
pub struct NodePorts {
    /// The node id.
    pub id: String,
    /// Outbound listener.
    pub outbound: SocketAddr,
    /// Inbound listener.
    pub inbound: SocketAddr,
}

impl NodePorts {
    /// Free ports for node `id`.
    pub fn new(id: &str) -> NodePorts {
        let p = free_ports(2);
        NodePorts {
            id: id.to_owned(),
            outbound: lo(p[0]),
            inbound: lo(p[1]),
        }
    }

    /// Its entry under `nodes:` in the mesh file.
    pub fn yaml(&self) -> String {
        format!(
            "  - id: {}\n    listeners: {{ outbound: {}, inbound: {}, local_app: 127.0.0.1:1 }}\n",
            self.id, self.outbound, self.inbound
        )
    }
}

/// Writes `text` to `path` atomically (write a temp file, rename), so that the control plane's
/// file poll never reads half an edit.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write mesh file");
    std::fs::rename(&tmp, path).expect("rename mesh file");
}

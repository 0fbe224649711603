//! A child process with its output in a log file, killed on drop.

use anyhow::{Context, Result};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How many log lines to print when a test panics with the child alive.
const TAIL_LINES: usize = 40;

/// A running child whose stdout and stderr are appended to `log`.
pub(crate) struct Managed {
    name: &'static str,
    log: PathBuf,
    child: Option<Child>,
}

impl Managed {
    /// Spawns `cmd` with stdin closed and its output appended to `log`.
    pub(crate) fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Managed> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Managed {
            name,
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    /// Errors (with the log) if the child has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            anyhow::bail!("{} is stopped", self.name);
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            anyhow::bail!(
                "{} exited early ({status}); its log:\n{}",
                self.name,
                self.logs()
            );
        }
        Ok(())
    }

    /// Kills the child (SIGKILL) and reaps it; no-op when not running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything the child wrote so far.
    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file's path.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
            eprintln!(
                "--- last {} lines of {} ({}) ---\n{}\n---",
                tail.len(),
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
        self.kill();
    }
}

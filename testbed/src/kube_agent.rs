//! The real `netfence run --kubeconfig FILE`, started inside a node's network
//! namespace with its log captured, stopped (SIGTERM by its PID) when dropped: the
//! agent on the test API server (`apiserver`), for the tests and the bench.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// `netfence run --kubeconfig` inside a node namespace; stopped on drop.
#[derive(Debug)]
pub struct KubeAgent {
    child: Child,
    log: PathBuf,
}

impl KubeAgent {
    /// Starts `binary run --node-name NODE --kubeconfig FILE --interfaces veth*
    /// --health-addr 127.0.0.1:0 EXTRA...` in `node`, its output in `log`, and waits
    /// up to `ready` for `netfence: ready`.
    pub fn start(
        binary: &Path,
        node: &Netns,
        kubeconfig: &Path,
        log: PathBuf,
        extra: &[&OsStr],
        ready: Duration,
    ) -> anyhow::Result<KubeAgent> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = node
            .command(&binary.to_string_lossy())
            .args(["run", "--node-name", crate::NODE_NAME, "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--interfaces", crate::POD_INTERFACES])
            .args(["--health-addr", "127.0.0.1:0"])
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting netfence run --kubeconfig")?;
        let agent = KubeAgent { child, log };
        agent.wait(|log| log.contains("netfence: ready"), "ready", ready)?;
        Ok(agent)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The highest `generation=N` the agent logged (0 before its first sync).
    pub fn generation(&self) -> u64 {
        self.log()
            .lines()
            .filter_map(|l| l.split("generation=").nth(1))
            .filter_map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// Waits up to `timeout` for a sync after `generation`.
    pub fn wait_sync_after(&self, generation: u64, timeout: Duration) -> anyhow::Result<()> {
        self.wait(|_| self.generation() > generation, "synced", timeout)
    }

    fn wait(
        &self,
        done: impl Fn(&str) -> bool,
        what: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        while !done(&self.log()) {
            if start.elapsed() > timeout {
                bail!(
                    "netfence not {what} within {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

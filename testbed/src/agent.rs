//! The real `netfence run`, started inside a node namespace with its output captured to
//! a log file, stopped by its PID (SIGTERM, then SIGKILL) when dropped. Readiness and
//! later syncs are read from the log: `netfence: ready` once enforcing, and
//! `synced generation=N` after each later sync.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// How the agent attaches its programs (`--attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    Auto,
    Tcx,
    Clsact,
}

impl Attach {
    fn as_arg(self) -> &'static str {
        match self {
            Attach::Auto => "auto",
            Attach::Tcx => "tcx",
            Attach::Clsact => "clsact",
        }
    }
}

const POLL: Duration = Duration::from_millis(50);
/// How long an agent may take to be ready; `NETFENCE_READY_TIMEOUT_S` raises it for
/// the bench's large clusters.
fn ready_timeout() -> Duration {
    std::env::var("NETFENCE_READY_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(20), Duration::from_secs)
}
/// A sync after a manifest edit: the agent debounces well under a second.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running agent, stopped on drop.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
    /// Bytes of the log file written by earlier agents (skipped by `log`).
    skip: u64,
}

impl Agent {
    /// Starts `binary run --node-name NODE --manifests DIR --interfaces GLOB... --attach
    /// MODE --detach-on-exit` inside `node` and waits until it logs `netfence: ready`.
    /// No globs means `--bridge cni0` (every port of the CNI bridge, as on Flannel).
    pub fn start(
        binary: &Path,
        node: &Netns,
        node_name: &str,
        manifests: &Path,
        interfaces: &[&str],
        attach: Attach,
        log: PathBuf,
    ) -> anyhow::Result<Agent> {
        Self::start_with(
            binary,
            node,
            node_name,
            manifests,
            interfaces,
            attach,
            log,
            &["--detach-on-exit".as_ref()],
        )
    }

    /// `start` with other extra arguments (e.g. `--pin-dir DIR`, and without
    /// `--detach-on-exit` to keep enforcement across a restart). The log file is
    /// appended to, so a restarted agent's log follows the previous one's.
    #[expect(
        clippy::too_many_arguments,
        reason = "start's arguments plus the extra ones"
    )]
    pub fn start_with(
        binary: &Path,
        node: &Netns,
        node_name: &str,
        manifests: &Path,
        interfaces: &[&str],
        attach: Attach,
        log: PathBuf,
        extra: &[&std::ffi::OsStr],
    ) -> anyhow::Result<Agent> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let skip = out.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = node.command(&binary.to_string_lossy());
        cmd.args(["run", "--node-name", node_name, "--manifests"])
            .arg(manifests)
            .args(["--attach", attach.as_arg()])
            .args(extra);
        if interfaces.is_empty() {
            cmd.args(["--bridge", crate::node::BRIDGE]);
        }
        // Each test agent serves netfence-cni on a socket of its own (beside its log),
        // never the node's `/run/netfence/cni.sock`, unless the caller picks one.
        if !extra
            .iter()
            .any(|a| a.to_str().is_some_and(|a| a.starts_with("--cni-socket")))
        {
            cmd.arg("--cni-socket").arg(log.with_extension("cni.sock"));
        }
        // Nor the host's `/var/lib/cni/results`: the node's cache only when the caller
        // names it (`Bed::start_agent_on` does).
        if !extra
            .iter()
            .any(|a| a.to_str().is_some_and(|a| a.starts_with("--cni-cache-dir")))
        {
            cmd.args(["--cni-cache-dir", ""]);
        }
        for glob in interfaces {
            cmd.args(["--interfaces", glob]);
        }
        // Plain text log lines, info level unless the caller asked for more.
        cmd.env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out));
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let mut agent = Agent {
            child: Some(child),
            log,
            skip,
        };
        agent.wait_for(ready_timeout(), "`netfence: ready`", |log| {
            log.contains("netfence: ready")
        })?;
        Ok(agent)
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent with SIGKILL (no cleanup at all) and reaps it.
    pub fn kill(mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("netfence was already stopped");
        };
        child.kill()?;
        Ok(child.wait()?)
    }

    /// Everything this agent logged so far, ANSI colours removed.
    pub fn log(&self) -> String {
        let all = std::fs::read(&self.log).unwrap_or_default();
        let own = all
            .get(usize::try_from(self.skip).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(own))
    }

    /// The highest `generation=N` the agent has logged (0 before the first).
    pub fn generation(&self) -> u64 {
        last_generation(&self.log())
    }

    /// Waits until the agent logs a sync with a generation above `after`; returns it.
    pub fn wait_for_sync_after(&mut self, after: u64) -> anyhow::Result<u64> {
        let what = format!("`synced generation=N` with N > {after}");
        self.wait_for(SYNC_TIMEOUT, &what, |log| last_generation(log) > after)?;
        Ok(self.generation())
    }

    /// Waits until a log line contains every one of `needles`; returns that line.
    pub fn wait_for_line(&mut self, needles: &[&str]) -> anyhow::Result<String> {
        let matches = |line: &str| needles.iter().all(|n| line.contains(n));
        let what = format!("a line containing {needles:?}");
        self.wait_for(SYNC_TIMEOUT, &what, |log| log.lines().any(matches))?;
        Ok(self
            .log()
            .lines()
            .find(|l| matches(l))
            .unwrap_or_default()
            .to_owned())
    }

    /// Polls the log until `done` holds, the agent exits, or `timeout` passes.
    fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let max_polls = timeout.as_millis() / POLL.as_millis() + 1;
        for _ in 0..max_polls {
            if done(&self.log()) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "netfence exited ({status}) before {what}; its log:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > timeout {
                break;
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "netfence did not log {what} within {timeout:?}; its log:\n{}",
            self.log()
        )
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after a bound); returns the status.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("netfence was already stopped");
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        // `ip netns exec` execs the agent, so the child's PID is the agent's.
        let pid = libc::pid_t::try_from(child.id()).context("PID out of range")?;
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(POLL);
        }
        child.kill()?;
        let status = child.wait()?;
        bail!("netfence ignored SIGTERM for {STOP_TIMEOUT:?} and was killed ({status})")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if let Err(error) = self.terminate() {
            eprintln!("testbed: stopping netfence: {error:#}");
        }
        if std::thread::panicking() {
            eprintln!(
                "--- netfence log ({}) ---\n{}--- end ---",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// The highest `generation=N` on a `synced` or `ready` line.
fn last_generation(log: &str) -> u64 {
    log.lines()
        .filter(|line| line.contains("synced") || line.contains("netfence: ready"))
        .filter_map(|line| {
            let rest = &line[line.find("generation=")? + "generation=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_comes_from_synced_lines() {
        let log = "INFO netfence: ready generation=1 interfaces=3\n\
                   INFO synced generation=2 writes=4\n\
                   WARN other generation=9\n\
                   INFO \u{1b}[3msynced\u{1b}[0m generation=3\n";
        assert_eq!(last_generation(&strip_ansi(log)), 3);
        assert_eq!(last_generation("no lines"), 0);
    }
}

//! The real `netfence run --kubeconfig FILE`, started inside a test node's network
//! namespace with its log captured, stopped with SIGTERM when dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netfence_testbed::Netns;

/// `netfence run --kubeconfig` inside the node namespace; killed (SIGTERM) on drop.
pub struct KubeAgent {
    child: std::process::Child,
    log: PathBuf,
}

impl KubeAgent {
    pub fn start(node: &Netns, kubeconfig: &Path, log: PathBuf) -> KubeAgent {
        let out = std::fs::File::create(&log).unwrap();
        let child = node
            .command(env!("CARGO_BIN_EXE_netfence"))
            .args([
                "run",
                "--node-name",
                netfence_testbed::NODE_NAME,
                "--kubeconfig",
            ])
            .arg(kubeconfig)
            .args(["--interfaces", netfence_testbed::POD_INTERFACES])
            .args(["--health-addr", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let agent = KubeAgent { child, log };
        agent.wait(|log| log.contains("netfence: ready"), "ready");
        agent
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

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

    fn wait(&self, done: impl Fn(&str) -> bool, what: &str) {
        let start = Instant::now();
        while !done(&self.log()) {
            assert!(
                start.elapsed() < super::TIMEOUT,
                "agent not {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_sync_after(&self, generation: u64) {
        self.wait(|_| self.generation() > generation, "synced");
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap(), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

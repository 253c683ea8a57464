//! A BPF file system for pin tests, and agents started with their pins on it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use netfence_testbed::NODE_NAME;

use super::{Agent, Attach, TestBed, netfence_bin};

/// A BPF file system mounted on a fresh directory (`nfb-<pid>-<tag>`); on drop the pins
/// are uninstalled, the agent's last-sync record removed and the file system unmounted.
pub struct Bpffs {
    pub dir: PathBuf,
}

impl Bpffs {
    pub fn mount(tag: &str) -> Bpffs {
        let dir = std::env::temp_dir().join(format!("nfb-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t bpf on {}", dir.display());
        Bpffs { dir }
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.dir.join("netfence")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = netfence::cli::uninstall::uninstall(&self.pin_dir());
        let _ = std::fs::remove_file(netfence::dataplane::last_sync::path_for(&self.pin_dir()));
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Starts the agent on `bed` over TCX with its pins under `pin_dir` (enforcement kept
/// on exit: no `--detach-on-exit`) and `extra` arguments; waits until it is ready.
pub fn start_pinned(bed: &TestBed, pin_dir: &Path, log: &Path, extra: &[&OsStr]) -> Agent {
    let mut args: Vec<&OsStr> = vec!["--pin-dir".as_ref(), pin_dir.as_os_str()];
    args.extend_from_slice(extra);
    Agent::start_with(
        netfence_bin(),
        bed.node(),
        NODE_NAME,
        &bed.manifests(),
        &[],
        Attach::Tcx,
        log.to_owned(),
        &args,
    )
    .unwrap_or_else(|e| panic!("starting netfence: {e:#}"))
}

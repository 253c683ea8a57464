//! The agent's lease: how long the plugin keeps failing closed while the agent does
//! not answer. The agent writes a small JSON file beside its socket
//! (`/run/netfence/cni.sock` → `/run/netfence/cni.lease.json`, atomically): while it
//! runs, an expiry `--cni-lease-seconds` ahead, renewed every few seconds; on SIGTERM
//! for a restart (its DaemonSet still exists), the same expiry from then; on an
//! uninstall (its DaemonSet or namespace is being deleted), an expiry of now.
//!
//! An ADD (or CHECK) that gets no answer from the agent, with `failClosed: true`:
//! - lease fresh (or no lease file at all: nothing says netfence is gone, e.g. right
//!   after a reboot, before the agent started): fails with code 11, the runtime
//!   retries: a restart or an upgrade leaves no new pod unprotected;
//! - lease expired (netfence uninstalled, or its agent down longer than the lease):
//!   passes with a warning naming the lease, so a node whose netfence was removed
//!   without its conflist entry (or a runtime still holding an older copy of the
//!   conflist) keeps starting pods.
//!
//! An unreadable lease file counts as fresh (fail closed).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file format's version.
pub const LEASE_VERSION: u32 = 1;

/// Why the agent wrote the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    /// The agent runs (renewed while it does).
    Running,
    /// The agent stopped for a restart: its DaemonSet still exists.
    Restarting,
    /// The agent stopped and could not tell why (no DaemonSet named, or the API
    /// did not answer).
    Stopped,
    /// The agent stopped because netfence is being uninstalled: expired at once.
    Uninstalled,
}

impl LeaseState {
    pub const fn as_str(self) -> &'static str {
        match self {
            LeaseState::Running => "running",
            LeaseState::Restarting => "restarting",
            LeaseState::Stopped => "stopped",
            LeaseState::Uninstalled => "uninstalled",
        }
    }
}

/// The lease file's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub version: u32,
    pub state: LeaseState,
    /// The agent's process id (for the operator).
    pub pid: u32,
    /// Seconds since the Unix epoch when the lease was written.
    pub written_unix: u64,
    /// Seconds since the Unix epoch after which the plugin stops failing closed.
    pub expires_unix: u64,
}

/// The lease file of the agent serving `socket`: its extension replaced by
/// `lease.json`.
pub fn path_for(socket: &Path) -> PathBuf {
    socket.with_extension("lease.json")
}

/// What the plugin finds when the agent does not answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// No lease file: fail closed.
    Missing,
    /// The lease has not expired (or cannot be read): fail closed.
    Fresh(String),
    /// The lease expired: pass with a warning.
    Expired(String),
}

/// Judges the lease at `path` at `now` (seconds since the Unix epoch).
pub fn standing(path: &Path, now: u64) -> Standing {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Standing::Missing,
        Err(error) => {
            return Standing::Fresh(format!(
                "its lease {} cannot be read ({error}): treated as fresh",
                path.display()
            ));
        }
    };
    let lease = match serde_json::from_slice::<Lease>(&bytes) {
        Ok(lease) if lease.version == LEASE_VERSION => lease,
        Ok(lease) => {
            return Standing::Fresh(format!(
                "its lease {} has version {} (this plugin reads {LEASE_VERSION}): treated as fresh",
                path.display(),
                lease.version
            ));
        }
        Err(error) => {
            return Standing::Fresh(format!(
                "its lease {} is not valid ({error}): treated as fresh",
                path.display()
            ));
        }
    };
    let state = lease.state.as_str();
    if lease.expires_unix > now {
        Standing::Fresh(format!(
            "its lease {} ({state}, pid {}) is fresh for {} s more",
            path.display(),
            lease.pid,
            lease.expires_unix - now
        ))
    } else if lease.state == LeaseState::Uninstalled {
        Standing::Expired(format!(
            "netfence was uninstalled from this node (lease {}, {} s ago)",
            path.display(),
            now - lease.expires_unix
        ))
    } else {
        Standing::Expired(format!(
            "its lease {} ({state}, pid {}) expired {} s ago: netfence removed, or its agent down longer than its lease",
            path.display(),
            lease.pid,
            now - lease.expires_unix
        ))
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(state: LeaseState, expires_unix: u64) -> Lease {
        Lease {
            version: LEASE_VERSION,
            state,
            pid: 42,
            written_unix: 1000,
            expires_unix,
        }
    }

    #[test]
    fn the_lease_sits_beside_the_socket() {
        assert_eq!(
            path_for(Path::new("/run/netfence/cni.sock")),
            PathBuf::from("/run/netfence/cni.lease.json")
        );
    }

    #[test]
    fn wire_shape() {
        let text = serde_json::to_string(&lease(LeaseState::Restarting, 1300)).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"state":"restarting","pid":42,"writtenUnix":1000,"expiresUnix":1300}"#
        );
    }

    #[test]
    fn standing_is_fresh_until_expiry_missing_without_a_file_and_fresh_when_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.lease.json");
        assert_eq!(standing(&path, 1000), Standing::Missing);
        let write = |l: &Lease| std::fs::write(&path, serde_json::to_vec(l).unwrap()).unwrap();
        write(&lease(LeaseState::Running, 1300));
        let p = path.display();
        assert_eq!(
            standing(&path, 1299),
            Standing::Fresh(format!(
                "its lease {p} (running, pid 42) is fresh for 1 s more"
            ))
        );
        assert_eq!(
            standing(&path, 1310),
            Standing::Expired(format!(
                "its lease {p} (running, pid 42) expired 10 s ago: netfence removed, or its agent down longer than its lease"
            ))
        );
        write(&lease(LeaseState::Uninstalled, 1000));
        assert_eq!(
            standing(&path, 1000),
            Standing::Expired(format!(
                "netfence was uninstalled from this node (lease {p}, 0 s ago)"
            ))
        );
        std::fs::write(&path, b"{").unwrap();
        assert!(
            matches!(standing(&path, 5000), Standing::Fresh(ref m) if m.contains("is not valid")),
            "a broken file fails closed"
        );
        let mut newer = lease(LeaseState::Running, 0);
        newer.version = 2;
        write(&newer);
        assert!(
            matches!(standing(&path, 5000), Standing::Fresh(ref m) if m.contains("has version 2")),
            "a newer format fails closed"
        );
    }
}

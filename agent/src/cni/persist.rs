//! The pending CNI endpoints kept across agent restarts: a small JSON file beside
//! the CNI socket (`/run/netfence/cni.sock` → `/run/netfence/cni.pending.json`),
//! rewritten atomically (a temporary file renamed over it) on every change and
//! removed when nothing is pending. A restarted agent reads it before its first sync,
//! so a pod announced by ADD but not yet in the state keeps its deny-all endpoint
//! instead of losing it to the first sync (it would then be no endpoint at all until
//! its state arrives: still dropped both ways, but as an unknown address, with no
//! pod name in the drop events and no binding to its veth).
//!
//! Beside the socket rather than named after the pin directory: the pending set is
//! what the plugin told the agent on that socket, and test agents (each in its own
//! mount namespace with a private `/sys/fs/bpf/netfence`) share the pin directory's
//! name but never a socket. `/run` is a tmpfs: gone at reboot, with the pods.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::pending::PendingEndpoint;

/// The file format's version; another version is refused by name.
pub const FILE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("reading {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("{path} is not a pending-endpoints file: {error}")]
    Parse {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{path}: version {found} is not supported (this agent reads {FILE_VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct File {
    version: u32,
    endpoints: Vec<PendingEndpoint>,
}

/// The pending file of the socket at `socket`: its extension replaced by
/// `pending.json`.
pub fn path_for(socket: &Path) -> PathBuf {
    socket.with_extension("pending.json")
}

/// The endpoints in the file at `path`; none when there is no file.
pub fn load(path: &Path) -> Result<Vec<PendingEndpoint>, PersistError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(PersistError::Read {
                path: path.to_owned(),
                error,
            });
        }
    };
    let parse = |error| PersistError::Parse {
        path: path.to_owned(),
        error,
    };
    // The version before the shape, so a newer file gets a clear answer.
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(parse)?;
    let found = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if found != u64::from(FILE_VERSION) {
        return Err(PersistError::Version {
            path: path.to_owned(),
            found: u32::try_from(found).unwrap_or(u32::MAX),
        });
    }
    let file: File = serde_json::from_value(value).map_err(parse)?;
    Ok(file.endpoints)
}

/// Writes `endpoints` to `path` atomically, or removes the file when there are none.
pub fn save<'a>(
    path: &Path,
    endpoints: impl IntoIterator<Item = &'a PendingEndpoint>,
) -> Result<(), PersistError> {
    let write = |error| PersistError::Write {
        path: path.to_owned(),
        error,
    };
    let file = File {
        version: FILE_VERSION,
        endpoints: endpoints.into_iter().cloned().collect(),
    };
    if file.endpoints.is_empty() {
        return match std::fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(write(error)),
            _ => Ok(()),
        };
    }
    let mut text = serde_json::to_vec_pretty(&file).map_err(|e| write(io::Error::other(e)))?;
    text.push(b'\n');
    let temp = path.with_extension(format!("pending.json.{}.tmp", std::process::id()));
    let result = (|| {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = std::fs::File::create(&temp)?;
        out.write_all(&text)?;
        out.sync_all()?;
        drop(out);
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::pending::{NetnsView, Pending, look_at_netns};

    fn endpoint(id: &str, netns: &Path, ip: &str, seen: bool) -> PendingEndpoint {
        PendingEndpoint {
            container_id: id.to_owned(),
            netns: netns.to_string_lossy().into_owned(),
            ifname: "eth0".to_owned(),
            ips: vec![ip.parse().unwrap()],
            namespace: Some("x".to_owned()),
            pod: Some(id.to_owned()),
            host_interfaces: vec![format!("veth{id}")],
            added_unix: 1_700_000_000,
            netns_seen: seen,
        }
    }

    #[test]
    fn the_file_sits_beside_the_socket() {
        assert_eq!(
            path_for(Path::new("/run/netfence/cni.sock")),
            PathBuf::from("/run/netfence/cni.pending.json")
        );
        assert_eq!(
            path_for(Path::new("/tmp/a/sock")),
            PathBuf::from("/tmp/a/sock.pending.json")
        );
    }

    #[test]
    fn save_then_load_round_trips_atomically_and_an_empty_set_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("run/cni.sock"));
        assert_eq!(load(&path).unwrap(), Vec::new(), "no file: nothing pending");
        let a = endpoint("a", Path::new("/run/netns/a"), "198.18.0.12", true);
        let b = endpoint("b", Path::new("/run/netns/b"), "fd00:18::13", false);
        save(&path, [&a, &b]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![a.clone(), b.clone()]);
        let text = std::fs::read_to_string(&path).unwrap();
        for field in [
            "\"version\": 1",
            "\"containerId\": \"a\"",
            "\"netns\": \"/run/netns/a\"",
            "\"ifname\": \"eth0\"",
            "\"hostInterfaces\"",
            "\"addedUnix\": 1700000000",
            "\"netnsSeen\": true",
            "\"namespace\": \"x\"",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        save(&path, [&b]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![b]);
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["cni.pending.json"], "no temporary file left");
        save(&path, []).unwrap();
        assert!(!path.exists(), "nothing pending: no file");
        save(&path, []).unwrap();
    }

    #[test]
    fn a_garbled_or_newer_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.pending.json");
        std::fs::write(&path, "{not json").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "{} is not a pending-endpoints file: ",
                path.display()
            )),
            "{error}"
        );
        std::fs::write(&path, r#"{"version":2,"endpoints":[]}"#).unwrap();
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{}: version 2 is not supported (this agent reads 1)",
                path.display()
            )
        );
    }

    #[test]
    fn the_sweep_drops_entries_whose_seen_netns_is_gone_and_keeps_unseen_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (ns_a, ns_b) = (dir.path().join("ns-a"), dir.path().join("ns-b"));
        std::fs::write(&ns_a, "").unwrap();
        std::fs::write(&ns_b, "").unwrap();
        let mut pending = Pending::default();
        pending.add(endpoint("a", &ns_a, "198.18.0.12", false));
        pending.add(endpoint("b", &ns_b, "198.18.0.13", false));
        // Never visible to the agent: kept whatever happens (only its DEL removes it).
        pending.add(endpoint(
            "c",
            &dir.path().join("never"),
            "198.18.0.14",
            false,
        ));
        // The agent's own namespace under a pod's name says nothing about the pod.
        pending.add(endpoint(
            "d",
            Path::new("/proc/self/ns/net"),
            "198.18.0.15",
            false,
        ));
        assert_eq!(look_at_netns("/proc/self/ns/net"), NetnsView::Unseen);
        assert_eq!(look_at_netns(""), NetnsView::Unseen);

        let (gone, changed) = pending.sweep(look_at_netns);
        assert_eq!(
            (gone, changed),
            (Vec::new(), true),
            "a and b seen for the first time"
        );
        assert!(pending.get("a").unwrap().netns_seen && pending.get("b").unwrap().netns_seen);
        assert!(!pending.get("c").unwrap().netns_seen && !pending.get("d").unwrap().netns_seen);
        assert_eq!(
            pending.sweep(look_at_netns),
            (Vec::new(), false),
            "nothing changed"
        );

        // a's sandbox is torn down without a DEL.
        std::fs::remove_file(&ns_a).unwrap();
        let (gone, changed) = pending.sweep(look_at_netns);
        assert!(changed);
        assert_eq!(
            gone.iter()
                .map(|e| e.container_id.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        let left: Vec<&str> = pending.iter().map(|e| e.container_id.as_str()).collect();
        assert_eq!(left, ["b", "c", "d"]);

        // The same through the file a restarted agent reads.
        let path = dir.path().join("cni.pending.json");
        save(&path, pending.iter()).unwrap();
        std::fs::remove_file(&ns_b).unwrap();
        let mut restored = Pending::default();
        for endpoint in load(&path).unwrap() {
            restored.add(endpoint);
        }
        let (gone, _) = restored.sweep(look_at_netns);
        assert_eq!(
            gone.iter()
                .map(|e| e.container_id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(restored.len(), 2);
    }
}

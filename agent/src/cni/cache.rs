//! The container runtime's CNI result cache (`netfence run --cni-cache-dir`): what
//! containerd and CRI-O (through libcni) keep of each attachment's ADD result, one
//! file per attachment named `<network>-<containerID>-<ifName>` in
//! `/var/lib/cni/results`, as JSON of kind `cniCacheV1`:
//!
//! ```json
//! {"kind":"cniCacheV1","containerId":"…","ifName":"eth0","networkName":"cbr0",
//!  "cniArgs":[["K8S_POD_NAMESPACE","x"],["K8S_POD_NAME","v"]],
//!  "result":{"cniVersion":"1.0.0",
//!    "interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/var/run/netns/…"}],
//!    "ips":[{"address":"10.244.1.5/24","interface":2}]}}
//! ```
//!
//! Each file becomes a [`CniRecord`] like a netfence-cni ADD's: the runtime's word on
//! the pod's addresses and its host interfaces (those without `sandbox`), so pods
//! ADDed before netfence-cni was chained, or while the agent was down, are bound from
//! the cluster side too, never from what they show. An address is taken only when
//! its `interface` (if given) is a sandbox interface. Files that are not such a cache
//! entry (unreadable, malformed, another kind, a result without addresses or host
//! interfaces, like a loopback attachment's) are skipped with a debug line.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use super::pending::UNNAMED_NAMESPACE;
use crate::dataplane::links::CniRecord;
use crate::dataplane::owners::Owner;
use crate::image::canonical_addr;

/// Where libcni keeps ADD results by default (its cache dir `/var/lib/cni`, `results`).
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni/results";

/// libcni's `kind` of a cache entry.
const KIND: &str = "cniCacheV1";

/// Larger files are not cache entries (a result is a few hundred bytes).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Why a file is not a usable cache entry.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: not a CNI cache entry: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: kind {kind:?}, not {KIND:?}")]
    Kind { path: PathBuf, kind: String },
    #[error("{path}: no address or no host interface in the result")]
    Empty { path: PathBuf },
}

#[derive(Deserialize)]
struct Entry {
    kind: String,
    #[serde(rename = "containerId", alias = "containerID")]
    container_id: String,
    #[serde(default, rename = "cniArgs")]
    cni_args: Vec<(String, String)>,
    result: CniResult,
}

#[derive(Deserialize)]
struct CniResult {
    #[serde(default)]
    interfaces: Vec<ResultInterface>,
    #[serde(default)]
    ips: Vec<ResultIp>,
}

#[derive(Deserialize)]
struct ResultInterface {
    name: String,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Deserialize)]
struct ResultIp {
    /// CIDR notation, `10.244.1.5/24`.
    address: String,
    #[serde(default)]
    interface: Option<usize>,
}

/// One cache entry's record, from its bytes (`path` names it in errors).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<CniRecord, CacheError> {
    let entry: Entry = serde_json::from_slice(bytes).map_err(|source| CacheError::Json {
        path: path.to_owned(),
        source,
    })?;
    if entry.kind != KIND {
        return Err(CacheError::Kind {
            path: path.to_owned(),
            kind: entry.kind,
        });
    }
    let interfaces = &entry.result.interfaces;
    let in_sandbox = |index: usize| {
        interfaces
            .get(index)
            .is_some_and(|i| i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in &entry.result.ips {
        if ip.interface.is_some_and(|index| !in_sandbox(index)) {
            continue; // an address of a host interface (or a bad index), not the pod's
        }
        let address = ip
            .address
            .split_once('/')
            .map_or(ip.address.as_str(), |(a, _)| a);
        match address.parse::<IpAddr>() {
            Ok(parsed) => ips.push(canonical_addr(parsed)),
            Err(_) => {
                tracing::debug!(path = %path.display(), address = %ip.address, "cni cache: unparsable address skipped")
            }
        }
    }
    ips.sort();
    ips.dedup();
    let host_interfaces: Vec<String> = interfaces
        .iter()
        .filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
        .map(|i| i.name.clone())
        .collect();
    if ips.is_empty() || host_interfaces.is_empty() {
        return Err(CacheError::Empty {
            path: path.to_owned(),
        });
    }
    let arg = |key: &str| {
        entry
            .cni_args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let owner = match (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME")) {
        (Some(namespace), Some(pod)) => Owner { namespace, pod },
        _ => Owner {
            namespace: UNNAMED_NAMESPACE.to_owned(),
            pod: entry.container_id,
        },
    };
    Ok(CniRecord {
        owner,
        ips,
        host_interfaces,
    })
}

/// Reads one file (regular, at most [`MAX_FILE_BYTES`]).
pub fn read(path: &Path) -> Result<CniRecord, CacheError> {
    let read_error = |source| CacheError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if metadata.len() > MAX_FILE_BYTES {
        return Err(CacheError::TooLarge {
            path: path.to_owned(),
        });
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    parse(path, &bytes)
}

/// The records of every cache entry in `dir`, newest file first (so of two entries
/// naming one address, a stale one whose DEL never came loses: [`links::bind`] keeps
/// the first record per address). A missing directory is no entries; files that are
/// not entries are skipped with a debug line. Errors listing `dir` are returned.
///
/// [`links::bind`]: crate::dataplane::links::bind
pub fn read_dir(dir: &Path) -> Result<Vec<CniRecord>, CacheError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CacheError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut found: Vec<(SystemTime, PathBuf, CniRecord)> = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(source) => {
                return Err(CacheError::Read {
                    path: dir.to_owned(),
                    source,
                });
            }
        };
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match read(&path) {
            Ok(record) => found.push((modified, path, record)),
            Err(error) => tracing::debug!("cni cache: skipped: {error}"),
        }
    }
    // Newest first; the path orders files of one modification time.
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    Ok(found.into_iter().map(|(_, _, record)| record).collect())
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;

//! The pinned state under `--pin-dir`: where maps and TCX links live on the BPF file
//! system, so that a restarted agent adopts them instead of detaching first.
//!
//! Layout of `DIR` (default `/sys/fs/bpf/netfence`):
//!
//! ```text
//! DIR/maps/<layout>/<MAP>      every map of the TC object but globals
//! DIR/links/<ifindex>-to_pod   TCX link of the program on the veth's egress
//! DIR/links/<ifindex>-from_pod TCX link of the program on the veth's ingress
//! ```
//!
//! `<layout>` is a fingerprint of the map ABI (key/value sizes, capacities and a manual
//! revision, see [`layout`]). A new agent whose layout differs from the pinned one
//! creates fresh maps in its own layout directory, fills them (a full sync), and then
//! switches the pinned links to its programs with `bpf_link_update` — one atomic
//! program swap per hook, so a packet sees either the old program with the old maps
//! or the new one with the new maps, never a mix and never nothing. Old layout
//! directories are removed after the switch.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use netfence_common::{
    CtKey, CtValue, EndpointKey, EndpointValue, FragKey, FragValue, IdentityKey, PolicyKey,
    PolicyValue, map,
};

/// The default `--pin-dir`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netfence";

/// `statfs.f_type` of a BPF file system.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Bumped by hand when a map's meaning changes without its sizes changing.
/// 3: CtValue's first padding byte became `replied`, and PORTS joined the map set.
const LAYOUT_REVISION: u32 = 3;

/// The maps that are pinned (and so survive a restart). Globals (`.rodata`/`.bss`)
/// are not: they are set per load.
pub const PINNED_MAPS: [&str; 10] = [
    map::ENDPOINTS,
    map::PORTS,
    map::IDENTITIES,
    map::POLICY,
    map::CONNTRACK,
    map::FRAGMENTS,
    map::COUNTERS,
    map::RULE_HITS,
    map::EVENTS,
    map::SETTINGS,
];

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "--pin-dir {dir}: {parent} is not a BPF file system and mounting one there failed: {source} \
         (mount it yourself: mount -t bpf bpf {parent})"
    )]
    Mount {
        dir: PathBuf,
        parent: PathBuf,
        source: io::Error,
    },
    #[error("--pin-dir {dir}: {what}: {source}")]
    Io {
        dir: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("--pin-dir {0} has no parent directory to mount a BPF file system on")]
    NoParent(PathBuf),
}

/// The map ABI fingerprint: FNV-1a of every pinned map's key size, value size and
/// capacity, plus [`LAYOUT_REVISION`], as 8 hex digits.
pub fn layout() -> String {
    use std::mem::size_of;
    let description = format!(
        "rev={LAYOUT_REVISION} ep={}/{}/{} ports=4/{}/{} id={}/4/{} pol={}/{}/{} ct={}/{}/{} frag={}/{}/{} \
         counters=8/{} rules=4/8/{} events={}",
        size_of::<EndpointKey>(),
        size_of::<EndpointValue>(),
        netfence_common::MAX_ENDPOINTS,
        size_of::<EndpointValue>(),
        netfence_common::MAX_PORTS,
        size_of::<IdentityKey>(),
        netfence_common::MAX_IDENTITY_PREFIXES,
        size_of::<PolicyKey>(),
        size_of::<PolicyValue>(),
        netfence_common::MAX_POLICY_ENTRIES,
        size_of::<CtKey>(),
        size_of::<CtValue>(),
        netfence_common::MAX_CONNTRACK,
        size_of::<FragKey>(),
        size_of::<FragValue>(),
        netfence_common::MAX_FRAGMENTS,
        netfence_common::Reason::ALL.len(),
        netfence_common::MAX_RULES,
        netfence_common::EVENTS_BYTES,
    );
    let mut hash: u32 = 0x811c_9dc5;
    for byte in description.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}")
}

/// Which hook a pinned link is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// TC egress of the host veth (`netfence_to_pod`).
    ToPod,
    /// TC ingress of the host veth (`netfence_from_pod`).
    FromPod,
}

impl Hook {
    pub const fn suffix(self) -> &'static str {
        match self {
            Hook::ToPod => "to_pod",
            Hook::FromPod => "from_pod",
        }
    }
}

/// The pin directory, checked to be on a BPF file system.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Opens `root` for pinning: when it is not on a BPF file system, mounts one at
    /// its parent (creating the parent if needed), then creates `maps/` and `links/`.
    pub fn prepare(root: &Path) -> Result<Self, PinError> {
        let io_error = |what| {
            move |source| PinError::Io {
                dir: root.to_owned(),
                what,
                source,
            }
        };
        if !on_bpffs(root) {
            let parent = root
                .parent()
                .ok_or_else(|| PinError::NoParent(root.to_owned()))?;
            std::fs::create_dir_all(parent).map_err(io_error("creating its parent"))?;
            if !on_bpffs(parent) {
                mount_bpffs(parent).map_err(|source| PinError::Mount {
                    dir: root.to_owned(),
                    parent: parent.to_owned(),
                    source,
                })?;
            }
        }
        let dir = Self {
            root: root.to_owned(),
        };
        std::fs::create_dir_all(dir.maps_dir()).map_err(io_error("creating maps/"))?;
        std::fs::create_dir_all(dir.links_dir()).map_err(io_error("creating links/"))?;
        Ok(dir)
    }

    /// Opens an existing pin directory without creating or mounting anything.
    pub fn existing(root: &Path) -> Option<Self> {
        (root.is_dir() && on_bpffs(root)).then(|| Self {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The directory of this build's maps.
    pub fn layout_dir(&self) -> PathBuf {
        self.maps_dir().join(layout())
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.layout_dir().join(name)
    }

    pub fn link_path(&self, ifindex: u32, hook: Hook) -> PathBuf {
        self.links_dir()
            .join(format!("{ifindex}-{}", hook.suffix()))
    }

    /// Layout directories other than this build's (left by another version).
    pub fn other_layouts(&self) -> Vec<PathBuf> {
        let own = layout();
        list(&self.maps_dir())
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy() != own))
            .collect()
    }

    /// Whether this build's maps are pinned already (a restart, not a first start).
    pub fn has_own_layout(&self) -> bool {
        self.map_path(map::ENDPOINTS).exists()
    }

    /// Pinned links, as (ifindex, hook, path).
    pub fn links(&self) -> Vec<(u32, Hook, PathBuf)> {
        list(&self.links_dir())
            .into_iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_str()?.to_owned();
                let (index, suffix) = name.split_once('-')?;
                let hook = match suffix {
                    "to_pod" => Hook::ToPod,
                    "from_pod" => Hook::FromPod,
                    _ => return None,
                };
                Some((index.parse().ok()?, hook, path))
            })
            .collect()
    }

    /// Removes a whole directory of pins (unlinking a pin releases its object).
    pub fn remove_tree(path: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// The entries of a directory (empty when it is missing), sorted.
fn list(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Whether `path` exists and is on a BPF file system.
pub fn on_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: a NUL-terminated path and a buffer the size of `struct statfs`.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: statfs succeeded and filled the buffer.
    let stat = unsafe { stat.assume_init() };
    #[expect(
        clippy::unnecessary_cast,
        reason = "f_type is i64 or u32 depending on the libc target"
    )]
    let f_type = stat.f_type as i64;
    f_type == BPF_FS_MAGIC
}

fn mount_bpffs(at: &Path) -> io::Result<()> {
    let target = CString::new(at.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let kind = c"bpf";
    let data = c"mode=0700";
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_eight_hex_digits_and_stable() {
        let a = layout();
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, layout());
    }

    #[test]
    fn a_plain_directory_is_not_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!on_bpffs(dir.path()));
        assert!(PinDir::existing(dir.path()).is_none());
    }
}

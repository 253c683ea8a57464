//! One test node: the node namespace with bridge `br0`, pods (and external hosts) as
//! namespaces on it, the manifest directory, and the agent started over them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

use crate::agent::{Agent, Attach};
use crate::manifest::{NamespaceSpec, PodSpec, cluster_yaml};
use crate::netns::Netns;

/// The node name pods are scheduled on and the agent runs as.
pub const NODE_NAME: &str = "node1";
/// The bridge's addresses (also the pods' default gateways and `status.hostIP`).
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1);
/// Host ends of pod veths are `nfp-<pod>`; the agent attaches to these.
pub const POD_INTERFACES: &str = "nfp-*";
/// Host ends of external hosts' veths (`nfe-<name>`): bridge ports the agent ignores.
const EXTERNAL_PREFIX: &str = "nfe-";

static BEDS: AtomicU32 = AtomicU32::new(0);

/// A namespace on the node's bridge: a pod's, or an external host's.
#[derive(Debug)]
pub struct PodNs {
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The veth end in the node namespace.
    pub host_if: String,
    pub netns: Netns,
}

impl PodNs {
    pub fn ip4(&self) -> IpAddr {
        IpAddr::V4(self.v4)
    }

    pub fn ip6(&self) -> IpAddr {
        IpAddr::V6(self.v6)
    }
}

/// A node namespace, its manifest directory and the cluster objects written there.
/// Drop order: the node namespace (and with it the bridge and every host-side veth),
/// then the directory; pods and agents are the caller's guards.
#[derive(Debug)]
pub struct TestBed {
    id: String,
    node: Netns,
    dir: TempDir,
    namespaces: Vec<NamespaceSpec>,
    pods: Vec<PodSpec>,
}

impl TestBed {
    /// A fresh node. Every name it creates starts with `prefix` followed by the PID and
    /// a per-process counter, so beds of parallel tests and processes never collide.
    pub fn new(prefix: &str) -> anyhow::Result<TestBed> {
        crate::require_root()?;
        remove_stale(prefix);
        let id = format!(
            "{prefix}{}x{}",
            std::process::id(),
            BEDS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = TempDir::new(&std::env::temp_dir().join(&id))?;
        std::fs::create_dir(dir.path.join("manifests"))?;
        let node = Netns::new(&format!("{id}-node"))?;
        node.ip(&["link", "add", "br0", "type", "bridge"])?;
        node.ip(&["addr", "add", &format!("{NODE_V4}/24"), "dev", "br0"])?;
        node.ip(&[
            "addr",
            "add",
            &format!("{NODE_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ])?;
        node.ip(&["link", "set", "br0", "up"])?;
        Ok(TestBed {
            id,
            node,
            dir,
            namespaces: Vec::new(),
            pods: Vec::new(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// A path in this bed's own directory (removed with the bed), for agent logs and
    /// other files a test writes.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    /// The directory the agent reads (`--manifests`).
    pub fn manifests(&self) -> PathBuf {
        self.dir.path.join("manifests")
    }

    /// Declares a Namespace (written by [`TestBed::write_cluster`]).
    pub fn namespace(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.namespaces.push(NamespaceSpec {
            name: name.into(),
            labels: owned(labels),
        });
    }

    /// Creates a pod namespace at `198.18.0.<host>` and `fd00:18::<host>` (hex as
    /// written) and declares the Pod, running on this node with named TCP ports.
    pub fn pod(
        &mut self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        host: u8,
        ports: &[(&str, u16)],
    ) -> anyhow::Result<PodNs> {
        let pod = self.attach(name, host, "nfp-")?;
        self.pods
            .push(pod_spec(namespace, name, labels, host, ports));
        Ok(pod)
    }

    /// Creates a namespace on the bridge that is no pod (a server outside the
    /// cluster, reachable only through ipBlocks).
    pub fn external(&mut self, name: &str, host: u8) -> anyhow::Result<PodNs> {
        self.attach(name, host, EXTERNAL_PREFIX)
    }

    fn attach(&mut self, name: &str, host: u8, prefix: &str) -> anyhow::Result<PodNs> {
        let host_if = format!("{prefix}{name}");
        if host_if.len() > 15 {
            bail!("interface name {host_if} is longer than 15 bytes; use a shorter pod name");
        }
        if host <= 1 {
            bail!("host number {host} is taken by the node");
        }
        let netns = Netns::new(&format!("{}-{name}", self.id))?;
        let (v4, v6) = host_addresses(host);
        self.node.ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ])?;
        self.node
            .ip(&["link", "set", &host_if, "master", "br0", "up"])?;
        netns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        netns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&["route", "add", "default", "via", &NODE_V4.to_string()])?;
        netns.ip(&["-6", "route", "add", "default", "via", &NODE_V6.to_string()])?;
        Ok(PodNs {
            name: name.into(),
            v4,
            v6,
            host_if,
            netns,
        })
    }

    /// The declared Namespaces and Pods as one `kind: List`.
    pub fn cluster_yaml(&self) -> String {
        cluster_yaml(&self.namespaces, &self.pods)
    }

    /// Writes the declared Namespaces and Pods to `cluster.yaml`.
    pub fn write_cluster(&self) -> anyhow::Result<()> {
        self.write_manifest("cluster.yaml", &self.cluster_yaml())
    }

    /// Writes (or replaces) a manifest atomically: a hidden temporary file renamed into
    /// place, so the agent never reads half a file.
    pub fn write_manifest(&self, file: &str, contents: &str) -> anyhow::Result<()> {
        let dir = self.manifests();
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(file)).with_context(|| format!("renaming to {file}"))
    }

    pub fn remove_manifest(&self, file: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.manifests().join(file))
            .with_context(|| format!("removing {file}"))
    }

    /// Starts `netfence run` on this node over the pod veths and waits until ready.
    pub fn start_agent(&self, binary: &Path, attach: Attach) -> anyhow::Result<Agent> {
        Agent::start(
            binary,
            &self.node,
            NODE_NAME,
            &self.manifests(),
            &[POD_INTERFACES],
            attach,
            self.dir
                .path
                .join(format!("agent-{}.log", attach_name(attach))),
        )
    }
}

/// Removes the namespaces and directories of beds whose process is gone (killed
/// before its guards could run). Only names `<prefix><pid>x...` whose PID no longer
/// exists are touched, so live beds of other processes are left alone.
fn remove_stale(prefix: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dead_owner = |name: &str| {
            let Some(rest) = name.strip_prefix(prefix) else {
                return false;
            };
            let Some((pid, _)) = rest.split_once('x') else {
                return false;
            };
            !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && !Path::new("/proc").join(pid).exists()
        };
        let listed = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten();
        for entry in listed {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead_owner(&name) {
                eprintln!("testbed: removing namespace {name} left by a killed run");
                let _ignored = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
        let temp = std::env::temp_dir();
        for entry in std::fs::read_dir(&temp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead_owner(&name) {
                let _ignored = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// The Pod a [`TestBed::pod`] call declares, without creating anything: for callers
/// that need the manifest alone (the demo checks its example files against it).
pub fn pod_spec(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    host: u8,
    ports: &[(&str, u16)],
) -> PodSpec {
    let (v4, v6) = host_addresses(host);
    PodSpec {
        namespace: namespace.into(),
        name: name.into(),
        labels: owned(labels),
        node_name: NODE_NAME.into(),
        host_ip: IpAddr::V4(NODE_V4),
        ips: vec![IpAddr::V4(v4), IpAddr::V6(v6)],
        ports: ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
    }
}

/// The Namespace a [`TestBed::namespace`] call declares.
pub fn namespace_spec(name: &str, labels: &[(&str, &str)]) -> NamespaceSpec {
    NamespaceSpec {
        name: name.into(),
        labels: owned(labels),
    }
}

fn attach_name(attach: Attach) -> &'static str {
    match attach {
        Attach::Auto => "auto",
        Attach::Tcx => "tcx",
        Attach::Clsact => "clsact",
    }
}

/// `198.18.0.<host>` and `fd00:18::<host>` with the same digits, for readability.
fn host_addresses(host: u8) -> (Ipv4Addr, Ipv6Addr) {
    let digits = u16::from_str_radix(&host.to_string(), 16).unwrap_or(u16::from(host));
    (
        Ipv4Addr::new(198, 18, 0, host),
        Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, digits),
    )
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A directory removed with its contents on drop.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(path: &Path) -> anyhow::Result<TempDir> {
        std::fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir {
            path: path.to_owned(),
        })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("testbed: removing {}: {error}", self.path.display());
        }
    }
}

//! A test bed: one Flannel-shaped node (or two over VXLAN), pods made by CNI on them,
//! hosts outside the cluster routed beyond node 1, the manifest directory every
//! node's agent reads, and the agents started over `cni0`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::agent::{Agent, Attach};
use crate::cni::ConfList;
use crate::manifest::{NamespaceSpec, PodSpec, cluster_yaml};
use crate::netns::Netns;
use crate::node::{Node, NodeAddrs, PodNs};

/// The node pods are scheduled on by default and the agent runs as.
pub const NODE_NAME: &str = "node1";
/// Node 1's `cni0` addresses (its pods' default gateways). Node IPs are
/// [`NodeAddrs::node_ip`] (`198.19.0.<n>`), pod subnets `198.18.<n-1>.0/24`.
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1);
/// Node 1's InternalIP (`status.hostIP` of its pods).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// A glob matching the host ends of pod veths, which the bridge plugin names `veth`
/// + 8 hex digits, for agents started with `--interfaces` instead of `--bridge`.
pub const POD_INTERFACES: &str = "veth*";
/// Host ends of external hosts' veths (`nfe-<name>`): routed links, no bridge ports.
const EXTERNAL_PREFIX: &str = "nfe-";
/// External hosts' addresses: `198.19.1.<host>` and `fd00:19:1::<host>`, behind the
/// gateway `.1` / `::1` that node 1 holds on each of their links.
const EXTERNAL_V4: [u8; 3] = [198, 19, 1];
const EXTERNAL_V6: [u16; 3] = [0xfd00, 0x19, 1];

static BEDS: AtomicU32 = AtomicU32::new(0);

/// Flannel-shaped nodes (one, or two over VXLAN), their manifest directory and the
/// cluster objects written there. Drop order: the node namespaces (with them `cni0`,
/// the uplink and flannel.1; a node namespace lives on while a pod guard needs it
/// for CNI DEL), then the directory; pods and agents are the caller's guards.
#[derive(Debug)]
pub struct TestBed {
    id: String,
    nodes: Vec<Node>,
    dir: TempDir,
    namespaces: Vec<NamespaceSpec>,
    pods: Vec<PodSpec>,
}

impl TestBed {
    /// A fresh single node (`node1`). Every name it creates starts with `prefix`
    /// followed by the PID and a per-process counter, so beds of parallel tests and
    /// processes never collide.
    pub fn new(prefix: &str) -> anyhow::Result<TestBed> {
        let mut bed = TestBed::empty(prefix)?;
        bed.add_node(1)?;
        let node = bed.node();
        // The node's uplink carries its InternalIP; nothing is beyond it (its peer
        // stays in the node namespace: this kernel has no dummy links).
        node.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0-peer",
        ])?;
        node.ip(&["link", "set", "eth0-peer", "up"])?;
        uplink_addresses(node, NodeAddrs::new(1)?)?;
        Ok(bed)
    }

    /// Two nodes, `node1` and `node2`, each with its own `cni0` and pod subnet, joined
    /// by a link carrying the node IPs and by `flannel.1` as Flannel's VXLAN backend
    /// sets it up (see [`crate::flannel`]).
    pub fn two_nodes(prefix: &str) -> anyhow::Result<TestBed> {
        let mut bed = TestBed::empty(prefix)?;
        bed.add_node(1)?;
        bed.add_node(2)?;
        crate::flannel::join(&bed.nodes[0], &bed.nodes[1])?;
        Ok(bed)
    }

    fn empty(prefix: &str) -> anyhow::Result<TestBed> {
        crate::require_root()?;
        remove_stale(prefix);
        let id = format!(
            "{prefix}{}x{}",
            std::process::id(),
            BEDS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = TempDir::new(&std::env::temp_dir().join(&id))?;
        std::fs::create_dir(dir.path.join("manifests"))?;
        Ok(TestBed {
            id,
            nodes: Vec::new(),
            dir,
            namespaces: Vec::new(),
            pods: Vec::new(),
        })
    }

    fn add_node(&mut self, number: u8) -> anyhow::Result<()> {
        let ns = if number == 1 {
            format!("{}-node", self.id)
        } else {
            format!("{}-node{number}", self.id)
        };
        let node = Node::new(&ns, NodeAddrs::new(number)?, &self.dir.path)?;
        self.nodes.push(node);
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Node 1's namespace.
    pub fn node(&self) -> &Netns {
        &self.nodes[0].netns
    }

    /// Node `number`'s namespace (1 or 2).
    pub fn node_ns(&self, number: u8) -> anyhow::Result<&Netns> {
        Ok(&self.node_ref(number)?.netns)
    }

    /// Node `number`'s addresses (subnets, gateways, node IP).
    pub fn node_addrs(&self, number: u8) -> anyhow::Result<NodeAddrs> {
        Ok(self.node_ref(number)?.addrs)
    }

    /// The conflist node `number` runs for its pods.
    pub fn conflist(&self, number: u8) -> anyhow::Result<&ConfList> {
        Ok(&self.node_ref(number)?.conflist)
    }

    /// Appends a chained plugin (e.g. `netfence-cni`) to every node's conflist for
    /// pods created afterwards; it is looked up in `dir` before `/usr/lib/cni`.
    pub fn chain_plugin(&mut self, plugin: &Value, dir: &Path) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.chain_plugin(plugin.clone(), dir.to_owned())?;
        }
        Ok(())
    }

    fn node_ref(&self, number: u8) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.addrs.number == number)
            .with_context(|| format!("this bed has no node {number}"))
    }

    /// A path in this bed's own directory (removed with the bed), for agent logs and
    /// other files a test writes.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    /// The directory the agents read (`--manifests`).
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

    /// Creates a pod on node 1 at `198.18.0.<host>` and `fd00:18::<host>` (hex as
    /// written) through CNI and declares the Pod, with named TCP ports.
    pub fn pod(
        &mut self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        host: u8,
        ports: &[(&str, u16)],
    ) -> anyhow::Result<PodNs> {
        self.pod_on(1, namespace, name, labels, host, ports)
    }

    /// Creates a pod on node `number` at `198.18.<number-1>.<host>` and
    /// `fd00:18:<number-1>::<host>`: CNI ADD (loopback, then bridge + host-local) in
    /// that node's namespace, as kubelet's runtime does; declares the Pod with
    /// `spec.nodeName` and `status.hostIP` of that node.
    pub fn pod_on(
        &mut self,
        number: u8,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        host: u8,
        ports: &[(&str, u16)],
    ) -> anyhow::Result<PodNs> {
        let ns_name = format!("{}-{name}", self.id);
        let pod = self
            .node_ref(number)?
            .add_pod(&ns_name, namespace, name, host)?;
        self.pods
            .push(pod_spec_on(number, namespace, name, labels, host, ports)?);
        Ok(pod)
    }

    /// Creates a host outside the cluster, beyond node 1 (a server past the node's
    /// uplink, reachable through ipBlocks): `198.19.1.<host>` and `fd00:19:1::<host>`
    /// on a routed veth (`nfe-<name>`, no bridge port), routes both ways.
    pub fn external(&mut self, name: &str, host: u8) -> anyhow::Result<PodNs> {
        let host_if = format!("{EXTERNAL_PREFIX}{name}");
        if host_if.len() > 15 {
            bail!("interface name {host_if} is longer than 15 bytes; use a shorter name");
        }
        if host <= 1 {
            bail!("host number {host} is the external hosts' gateway");
        }
        let [a, b, c] = EXTERNAL_V4;
        let [x, y, z] = EXTERNAL_V6;
        let digits = u16::from_str_radix(&host.to_string(), 16).unwrap_or(u16::from(host));
        let (v4, v6) = (
            Ipv4Addr::new(a, b, c, host),
            Ipv6Addr::new(x, y, z, 0, 0, 0, 0, digits),
        );
        let (gw4, gw6) = (
            Ipv4Addr::new(a, b, c, 1),
            Ipv6Addr::new(x, y, z, 0, 0, 0, 0, 1),
        );
        let netns = Netns::new(&format!("{}-{name}", self.id))?;
        crate::node::pod_is_a_host(&netns)?;
        let node = self.node();
        node.ip(&[
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
        node.ip(&["addr", "add", &format!("{gw4}/32"), "dev", &host_if])?;
        node.ip(&[
            "addr",
            "add",
            &format!("{gw6}/128"),
            "dev",
            &host_if,
            "nodad",
        ])?;
        node.ip(&["link", "set", &host_if, "up"])?;
        node.ip(&["route", "add", &format!("{v4}/32"), "dev", &host_if])?;
        node.ip(&["-6", "route", "add", &format!("{v6}/128"), "dev", &host_if])?;
        netns.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"])?;
        netns.ip(&["addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &gw4.to_string(),
            "dev",
            "eth0",
            "onlink",
        ])?;
        netns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gw6.to_string(),
            "dev",
            "eth0",
            "onlink",
        ])?;
        Ok(PodNs::plain(name, v4, v6, host_if, netns))
    }

    /// Installs (or replaces) the lab's kube-proxy DNAT for `vips` on every node, as
    /// kube-proxy programs every node with every Service.
    pub fn install_services(&self, vips: &[crate::kube_proxy::Vip]) -> anyhow::Result<()> {
        for node in &self.nodes {
            crate::kube_proxy::install(&node.netns, vips)?;
        }
        Ok(())
    }

    /// The declared Namespaces and Pods as one `kind: List`.
    pub fn cluster_yaml(&self) -> String {
        cluster_yaml(&self.namespaces, &self.pods)
    }

    /// Writes the declared Namespaces and Pods to `cluster.yaml` (once: every node's
    /// agent reads the same directory).
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

    /// Starts `netfence run` on node 1 over the ports of `cni0` and waits until ready.
    pub fn start_agent(&self, binary: &Path, attach: Attach) -> anyhow::Result<Agent> {
        self.start_agent_on(1, binary, attach)
    }

    /// Starts `netfence run --node-name node<number> --bridge cni0` in node `number`'s
    /// namespace over the shared manifest directory, reading the node's CNI result
    /// cache (`--cni-cache-dir`) as an agent on a real node does; waits until ready.
    pub fn start_agent_on(
        &self,
        number: u8,
        binary: &Path,
        attach: Attach,
    ) -> anyhow::Result<Agent> {
        let node = self.node_ref(number)?;
        let log = if number == 1 {
            format!("agent-{}.log", attach_name(attach))
        } else {
            format!("agent-{}-{}.log", node.addrs.name(), attach_name(attach))
        };
        let results = node.cni.results_dir();
        Agent::start_with(
            binary,
            &node.netns,
            &node.addrs.name(),
            &self.manifests(),
            &[],
            attach,
            self.dir.path.join(log),
            &[
                "--detach-on-exit".as_ref(),
                "--cni-cache-dir".as_ref(),
                results.as_os_str(),
            ],
        )
    }

    /// Node 1's CNI result cache, where the lab's runtime keeps ADD results in
    /// libcni's format: `--cni-cache-dir` for agents started by hand.
    pub fn cni_cache_dir(&self) -> PathBuf {
        self.nodes[0].cni.results_dir()
    }
}

/// Puts node `addrs`' InternalIP (and an IPv6 one) on its uplink `eth0`, brought up.
pub(crate) fn uplink_addresses(node: &Netns, addrs: NodeAddrs) -> anyhow::Result<()> {
    node.ip(&[
        "addr",
        "add",
        &format!("{}/24", addrs.node_ip()),
        "dev",
        "eth0",
    ])?;
    node.ip(&[
        "addr",
        "add",
        &format!("{}/64", addrs.node_ip6()),
        "dev",
        "eth0",
        "nodad",
    ])?;
    node.ip(&["link", "set", "eth0", "up"])?;
    Ok(())
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
    pod_spec_at(
        NodeAddrs { number: 1 },
        namespace,
        name,
        labels,
        host,
        ports,
    )
}

/// The Pod a [`TestBed::pod_on`] call declares on node `number`.
pub fn pod_spec_on(
    number: u8,
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    host: u8,
    ports: &[(&str, u16)],
) -> anyhow::Result<PodSpec> {
    Ok(pod_spec_at(
        NodeAddrs::new(number)?,
        namespace,
        name,
        labels,
        host,
        ports,
    ))
}

fn pod_spec_at(
    node: NodeAddrs,
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    host: u8,
    ports: &[(&str, u16)],
) -> PodSpec {
    let (v4, v6) = node.pod_addresses(host);
    PodSpec {
        namespace: namespace.into(),
        name: name.into(),
        labels: owned(labels),
        node_name: node.name(),
        host_ip: IpAddr::V4(node.node_ip()),
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

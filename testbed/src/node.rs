//! One Flannel-shaped node: its namespace with what a Flannel node has (forwarding,
//! `br_netfilter` calls, bridge `cni0` holding the `<subnet>.1` gateway), the conflist
//! Flannel delegates to, and pods created through it by the real `bridge` +
//! `host-local` (+ `loopback`) CNI plugins, torn down by CNI DEL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::cni::{Attachment, Cni, ConfList, host_veth, result_ips};
use crate::netns::Netns;

/// The CNI bridge every pod of a node is a port of (Flannel's delegate: `cni0`).
pub const BRIDGE: &str = "cni0";
/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The whole pod network (Flannel's `Network`): every node's subnet is inside it.
pub const CLUSTER_V4: &str = "198.18.0.0/16";
pub const CLUSTER_V6: &str = "fd00:18::/48";

/// A node's addresses: node `n` (1-based) owns `198.18.<n-1>.0/24` and
/// `fd00:18:<n-1>::/64`, and has the node IPs `198.19.0.<n>` and `fd00:19::<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddrs {
    pub number: u8,
}

impl NodeAddrs {
    pub fn new(number: u8) -> anyhow::Result<NodeAddrs> {
        if !(1..=2).contains(&number) {
            bail!("node {number}: the lab has nodes 1 and 2");
        }
        Ok(NodeAddrs { number })
    }

    /// `node1`, `node2`: `spec.nodeName` and the agent's `--node-name`.
    pub fn name(self) -> String {
        format!("node{}", self.number)
    }

    fn octet(self) -> u8 {
        self.number - 1
    }

    /// The pod subnet's IPv4 network address (`198.18.<n-1>.0`), also flannel.1's.
    pub fn subnet_v4(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.octet(), 0)
    }

    pub fn subnet_v6(self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x18, u16::from(self.octet()), 0, 0, 0, 0, 0)
    }

    /// `cni0`'s addresses, the pods' default gateways.
    pub fn gateway_v4(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.octet(), 1)
    }

    pub fn gateway_v6(self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x18, u16::from(self.octet()), 0, 0, 0, 0, 1)
    }

    /// The node's InternalIP (`status.hostIP` of its pods), on its uplink `eth0`.
    pub fn node_ip(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 0, self.number)
    }

    pub fn node_ip6(self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, u16::from(self.number))
    }

    /// A pod's addresses on this node: `198.18.<n-1>.<host>` and
    /// `fd00:18:<n-1>::<host>` (the decimal digits read as hex, for readability).
    pub fn pod_addresses(self, host: u8) -> (Ipv4Addr, Ipv6Addr) {
        let digits = u16::from_str_radix(&host.to_string(), 16).unwrap_or(u16::from(host));
        (
            Ipv4Addr::new(198, 18, self.octet(), host),
            Ipv6Addr::new(0xfd00, 0x18, u16::from(self.octet()), 0, 0, 0, 0, digits),
        )
    }
}

/// A node namespace with `cni0` and its CNI configuration.
#[derive(Debug)]
pub struct Node {
    pub addrs: NodeAddrs,
    /// Shared with the pods, whose CNI DEL runs inside it.
    pub netns: Arc<Netns>,
    pub conflist: ConfList,
    pub cni: Cni,
}

impl Node {
    /// Creates the namespace `ns_name` as node `addrs`, its IPAM state and CNI result
    /// cache under `dir`.
    pub fn new(ns_name: &str, addrs: NodeAddrs, dir: &Path) -> anyhow::Result<Node> {
        let netns = Netns::new(ns_name)?;
        // What a Flannel node has: forwarding (Flannel and the bridge plugin's
        // isGateway set it), and bridged packets through netfilter (kube-proxy needs
        // it: a same-node Service reply is bridged and must meet its conntrack entry).
        // And no IPv6 DAD on the node's interfaces (`cni0`, host veths, uplinks),
        // created after this: while a link-local address is tentative the kernel sends
        // no neighbour solicitation for a forwarded packet (`ndisc_send_ns` needs a
        // usable link-local source), so the first IPv6 replies toward a fresh pod would
        // wait a second or more for DAD, longer than a probe's timeout.
        run_in(
            &netns,
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.bridge.bridge-nf-call-iptables=1",
                "net.bridge.bridge-nf-call-ip6tables=1",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        // `cni0` as the bridge plugin leaves it after a node's first pod (it adopts an
        // existing bridge holding its gateway addresses), so an agent can start on a
        // node without pods. IPv6 DAD is skipped: the address is ours alone.
        netns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        netns.ip(&[
            "addr",
            "add",
            &format!("{}/24", addrs.gateway_v4()),
            "dev",
            BRIDGE,
        ])?;
        netns.ip(&[
            "addr",
            "add",
            &format!("{}/64", addrs.gateway_v6()),
            "dev",
            BRIDGE,
            "nodad",
        ])?;
        netns.ip(&["link", "set", BRIDGE, "up"])?;
        let state = dir.join(addrs.name());
        let mut conflist = ConfList::flannel_delegate(
            &format!("{}/24", addrs.subnet_v4()),
            &format!("{}/64", addrs.subnet_v6()),
            &[CLUSTER_V4, CLUSTER_V6],
            &state.join("ipam"),
        );
        // The lab pins each pod's addresses (tests name them): the runtime passes
        // them as `runtimeConfig.ips`, which host-local honours for plugins declaring
        // the `ips` capability (CNI_ARGS `IP=` takes one address only).
        conflist.declare_capability(0, "ips")?;
        let cni = Cni::new(vec![PathBuf::from(CNI_BIN_DIR)], state);
        Ok(Node {
            addrs,
            netns: Arc::new(netns),
            conflist,
            cni,
        })
    }

    /// Creates pod `namespace/name`'s network namespace `ns_name` and runs CNI ADD for
    /// it as a runtime does: `loopback` on `lo`, then the node's conflist on `eth0`
    /// with the addresses of `host` requested. The returned guard runs CNI DEL.
    pub fn add_pod(
        &self,
        ns_name: &str,
        namespace: &str,
        name: &str,
        host: u8,
    ) -> anyhow::Result<PodNs> {
        if host <= 1 {
            bail!("host number {host} is taken by the node");
        }
        let (v4, v6) = self.addrs.pod_addresses(host);
        let netns = Netns::new(ns_name)?;
        pod_is_a_host(&netns)?;
        let loopback = ConfList::from_json(json!({
            "cniVersion": "1.0.0",
            "name": "cni-loopback",
            "plugins": [{ "type": "loopback" }],
        }))?;
        let mut lo = Attachment::pod(ns_name, ns_name, namespace, name, &[]);
        lo.ifname = "lo".into();
        self.cni
            .add(&self.netns, &loopback, &lo)
            .with_context(|| format!("pod {namespace}/{name}: loopback"))?;
        let att = Attachment::pod(ns_name, ns_name, namespace, name, &[v4.into(), v6.into()]);
        let mut pod = PodNs {
            name: name.into(),
            v4,
            v6,
            host_if: String::new(),
            teardown: Some(Teardown {
                node: Arc::clone(&self.netns),
                cni: self.cni.clone(),
                conflist: self.conflist.clone(),
                attachment: att.clone(),
            }),
            netns,
        };
        let result = self
            .cni
            .add(&self.netns, &self.conflist, &att)
            .with_context(|| format!("pod {namespace}/{name}: CNI ADD"))?;
        let ips = result_ips(&result)?;
        if ips != [IpAddr::V4(v4), IpAddr::V6(v6)] {
            bail!("pod {namespace}/{name}: CNI gave {ips:?}, not {v4} and {v6}: {result}");
        }
        pod.host_if = host_veth(&result, BRIDGE)?;
        // The pod's first packets: one echo to each gateway, so the node has the pod
        // in its neighbour tables before a test's first probe. Without it, the first
        // IPv6 packet forwarded to a new pod from another node waits about 2 s for
        // neighbour discovery (a probe's timeout is 1.5 s).
        // Best effort: a policy may drop the echo (neighbour discovery still passes).
        for gateway in [
            IpAddr::V4(self.addrs.gateway_v4()),
            IpAddr::V6(self.addrs.gateway_v6()),
        ] {
            let _echo = pod
                .netns
                .command("ping")
                .args(["-c1", "-W1", "-q", &gateway.to_string()])
                .output();
        }
        Ok(pod)
    }

    /// Appends `plugin` to this node's conflist (after `bridge`), found in `dir` first.
    pub fn chain_plugin(&mut self, plugin: Value, dir: PathBuf) -> anyhow::Result<()> {
        self.conflist.push_plugin(plugin)?;
        self.cni.prepend_plugin_dir(dir);
        Ok(())
    }
}

/// A namespace that is a pod (made by CNI) or an external host.
#[derive(Debug)]
pub struct PodNs {
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The veth end in the node namespace: for pods, the name the bridge plugin chose
    /// (`veth` + 8 hex digits), as on a real node.
    pub host_if: String,
    teardown: Option<Teardown>,
    pub netns: Netns,
}

impl PodNs {
    pub fn ip4(&self) -> IpAddr {
        IpAddr::V4(self.v4)
    }

    pub fn ip6(&self) -> IpAddr {
        IpAddr::V6(self.v6)
    }

    /// A namespace that is no pod (no CNI teardown).
    pub(crate) fn plain(
        name: &str,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
        host_if: String,
        netns: Netns,
    ) -> PodNs {
        PodNs {
            name: name.into(),
            v4,
            v6,
            host_if,
            teardown: None,
            netns,
        }
    }
}

/// What CNI DEL of a pod needs: the runtime's view of its attachment.
#[derive(Debug)]
struct Teardown {
    node: Arc<Netns>,
    cni: Cni,
    conflist: ConfList,
    attachment: Attachment,
}

impl Drop for PodNs {
    /// CNI DEL (the veth goes, host-local releases the addresses), then the pod's
    /// namespace is deleted (the `netns` field's own guard).
    fn drop(&mut self) {
        if let Some(t) = self.teardown.take()
            && let Err(error) = t.cni.del(&t.node, &t.conflist, &t.attachment)
        {
            eprintln!("testbed: CNI DEL of pod {}: {error:#}", self.name);
        }
    }
}

/// Runs `program args...` inside `netns`.
/// Makes a new pod namespace a host, not a router, whatever the machine's own
/// setting: a new namespace takes the IPv4 `conf` settings of the initial one, so on a
/// machine with forwarding on (a container runtime turns it on) a pod would route a
/// frame addressed to it back out, looping until the TTL runs out (127 copies of 4
/// diverted datagrams in an attack test's control half).
pub(crate) fn pod_is_a_host(netns: &Netns) -> anyhow::Result<()> {
    run_in(
        netns,
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_forward=0",
            "net.ipv6.conf.all.forwarding=0",
        ],
    )
    .map(drop)
}

fn run_in(netns: &Netns, program: &str, args: &[&str]) -> anyhow::Result<String> {
    crate::netns::run(netns.command(program).args(args))
}
